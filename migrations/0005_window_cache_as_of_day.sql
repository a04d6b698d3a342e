-- depends: 0004_window_cache
-- A run read three days of activity at 1M players: the day that left the window, the day
-- that entered the cached days (the previous run's as_of day, which that run had read
-- already) and its own as_of day. The cache now keeps each player's totals of the last
-- run's as_of day as well, so the next run takes that day from the cache unless it was
-- written since (then it reads it again, as before). A player active on that day only
-- gets a cache row with no cached days.
ALTER TABLE segmentation.window_cache ADD COLUMN as_of_totals float8[];
COMMENT ON COLUMN segmentation.window_cache.as_of_totals IS
    'Sum of each metric''s valid values on the day after cached_through (the last run''s as_of day); NULL if the player had no row that day.';
-- A cache written by an older version (a run still going while this migration and the
-- install ran) has no such totals: the state says whether the game's rows hold them.
ALTER TABLE segmentation.window_cache_state
    ADD COLUMN holds_as_of_day boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN segmentation.window_cache_state.holds_as_of_day IS
    'True when the game''s window_cache rows hold as_of_totals (caches written before migration 0005 do not).';
