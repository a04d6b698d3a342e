-- depends: 0005_window_cache_as_of_day
-- Every run rewrote its game's cache rows with DELETE and INSERT: at 1M players 1.7 s of
-- the nightly categorize_all (0.4 s to delete, 1.3 s to insert and index), and a million
-- dead rows a night for autovacuum. The cache is now partitioned by game, one UNLOGGED
-- partition each (UNLOGGED as before; a partitioned table itself cannot be): a run
-- empties its game's partition with TRUNCATE, which also rolls back, and fills it
-- without an index to maintain. Partitions are created by the first run of a game
-- (segmentation._empty_window_cache, sql/150_window_cache.sql).
-- The cache holds nothing that cannot be recomputed from player_activity: it is dropped
-- with its states, and the next run of each game rebuilds it.
DROP TABLE segmentation.window_cache;
DELETE FROM segmentation.window_cache_state;
CREATE TABLE segmentation.window_cache (
    game_id      text        NOT NULL,
    player_id    text        NOT NULL,
    days         bit varying NOT NULL,
    totals       float8[]    NOT NULL,
    as_of_totals float8[]
) PARTITION BY LIST (game_id);
COMMENT ON TABLE segmentation.window_cache IS
    'Per-player aggregates of the cached days of a game''s window and of the last run''s as_of day (see window_cache_state), one partition per game; rebuilt from player_activity when in doubt.';
COMMENT ON COLUMN segmentation.window_cache.game_id IS 'Game.';
COMMENT ON COLUMN segmentation.window_cache.player_id IS 'Player.';
COMMENT ON COLUMN segmentation.window_cache.days IS
    'Active days, lookback_days - 1 bits: bit i (from the left, 0-based) is cached_through - i.';
COMMENT ON COLUMN segmentation.window_cache.totals IS
    'Sum of each metric''s valid daily values over the cached days, in window_cache_state.metrics order.';
COMMENT ON COLUMN segmentation.window_cache.as_of_totals IS
    'Sum of each metric''s valid values on the day after cached_through (the last run''s as_of day); NULL if the player had no row that day.';
