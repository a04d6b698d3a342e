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
