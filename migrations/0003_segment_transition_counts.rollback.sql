-- depends: 0001_initial
DROP TABLE IF EXISTS segmentation.segment_transition_counts;
