-- depends: 0004_window_cache
ALTER TABLE segmentation.window_cache DROP COLUMN IF EXISTS as_of_totals;
ALTER TABLE segmentation.window_cache_state DROP COLUMN IF EXISTS holds_as_of_day;
