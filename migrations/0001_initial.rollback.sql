DROP TABLE IF EXISTS segmentation.runs;
DROP TABLE IF EXISTS segmentation.player_segment_memberships;
DROP TABLE IF EXISTS segmentation.segment_definitions;
DROP TABLE IF EXISTS segmentation.behavioral_axes;
DROP TABLE IF EXISTS segmentation.game_behavioral_taxonomy;
DROP TABLE IF EXISTS segmentation.feature_sources;
DROP TABLE IF EXISTS segmentation.player_activity;
