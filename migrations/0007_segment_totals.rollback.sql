-- depends: 0006_window_cache_partitions
DROP TABLE IF EXISTS segmentation.segment_totals;
