-- depends: 0005_window_cache_as_of_day
-- Back to one table for every game (as 0004 and 0005 left it), empty: the next run of
-- each game rebuilds its cache.
DROP TABLE segmentation.window_cache;
DELETE FROM segmentation.window_cache_state;
CREATE UNLOGGED TABLE segmentation.window_cache (
    game_id      text        NOT NULL,
    player_id    text        NOT NULL,
    days         bit varying NOT NULL,
    totals       float8[]    NOT NULL,
    as_of_totals float8[]
);
CREATE INDEX window_cache_game_idx ON segmentation.window_cache (game_id);
COMMENT ON TABLE segmentation.window_cache IS
    'Per-player aggregates of the cached days of a game''s window and of the last run''s as_of day (see window_cache_state); rebuilt from player_activity when in doubt.';
COMMENT ON COLUMN segmentation.window_cache.game_id IS 'Game.';
COMMENT ON COLUMN segmentation.window_cache.player_id IS 'Player.';
COMMENT ON COLUMN segmentation.window_cache.days IS
    'Active days, lookback_days - 1 bits: bit i (from the left, 0-based) is cached_through - i.';
COMMENT ON COLUMN segmentation.window_cache.totals IS
    'Sum of each metric''s valid daily values over the cached days, in window_cache_state.metrics order.';
COMMENT ON COLUMN segmentation.window_cache.as_of_totals IS
    'Sum of each metric''s valid values on the day after cached_through (the last run''s as_of day); NULL if the player had no row that day.';
