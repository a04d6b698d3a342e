-- depends: 0003_segment_transition_counts
-- categorize_all aggregated every player's whole window on every run: at 1M players most
-- of its time. It now keeps each game's per-player window aggregates between runs and
-- reads only what changed: the days that entered the window, the days that left it, the
-- as_of day itself (never cached: it may still be filling), and the players whose cached
-- days were written since. Triggers on player_activity log those writes.
-- The two cache tables are UNLOGGED: after a crash both come back empty and the next run
-- rebuilds them. They hold nothing that cannot be recomputed from player_activity.
CREATE UNLOGGED TABLE segmentation.window_cache_state (
    game_id        text     PRIMARY KEY,
    cached_through date     NOT NULL,
    built_through  date     NOT NULL,
    lookback_days  integer  NOT NULL CHECK (lookback_days >= 1),
    metrics        text[]   NOT NULL,
    players        bigint   NOT NULL CHECK (players >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE segmentation.window_cache_state IS
    'One row per game whose window aggregates categorize_all keeps in window_cache; delete a game''s row to make the next run rebuild them.';
COMMENT ON COLUMN segmentation.window_cache_state.game_id IS 'Game.';
COMMENT ON COLUMN segmentation.window_cache_state.cached_through IS 'Last day the cache covers (the day before the last run''s as_of).';
COMMENT ON COLUMN segmentation.window_cache_state.built_through IS 'cached_through of the last full rebuild; the cache is rebuilt once it is lookback_days older.';
COMMENT ON COLUMN segmentation.window_cache_state.lookback_days IS 'Window length the aggregates were built for.';
COMMENT ON COLUMN segmentation.window_cache_state.metrics IS 'Metric names, in the order of window_cache.totals.';
COMMENT ON COLUMN segmentation.window_cache_state.players IS 'Players in the cache.';
COMMENT ON COLUMN segmentation.window_cache_state.updated_at IS 'When the last run wrote the cache.';

CREATE UNLOGGED TABLE segmentation.window_cache (
    game_id   text          NOT NULL,
    player_id text          NOT NULL,
    days      bit varying   NOT NULL,
    totals    float8[]      NOT NULL
);
CREATE INDEX window_cache_game_idx ON segmentation.window_cache (game_id);
COMMENT ON TABLE segmentation.window_cache IS
    'Per-player aggregates of the cached days of a game''s window (see window_cache_state); rebuilt from player_activity when in doubt.';
COMMENT ON COLUMN segmentation.window_cache.game_id IS 'Game.';
COMMENT ON COLUMN segmentation.window_cache.player_id IS 'Player.';
COMMENT ON COLUMN segmentation.window_cache.days IS 'Active days, lookback_days bits: bit i (from the left, 0-based) is cached_through - i.';
COMMENT ON COLUMN segmentation.window_cache.totals IS 'Sum of each metric''s valid daily values over the cached days, in window_cache_state.metrics order.';

-- Written by triggers on player_activity (sql/150_window_cache.sql), read and emptied by
-- categorize_all. A row without player_id says only that the day was written.
CREATE TABLE segmentation.activity_changes (
    game_id       text NOT NULL,
    activity_date date NOT NULL,
    player_id     text
);
CREATE INDEX activity_changes_game_idx ON segmentation.activity_changes (game_id);
COMMENT ON TABLE segmentation.activity_changes IS
    'Days (and, for days already cached, players) written in player_activity since the last categorize_all of the game; filled by triggers.';
COMMENT ON COLUMN segmentation.activity_changes.game_id IS 'Game.';
COMMENT ON COLUMN segmentation.activity_changes.activity_date IS 'Day of the written rows.';
COMMENT ON COLUMN segmentation.activity_changes.player_id IS 'Player whose cached day was written; NULL for a day the cache did not hold when written.';
