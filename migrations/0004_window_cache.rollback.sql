-- depends: 0003_segment_transition_counts
DROP TABLE IF EXISTS segmentation.activity_changes;
DROP TABLE IF EXISTS segmentation.window_cache;
DROP TABLE IF EXISTS segmentation.window_cache_state;
