-- depends: 0007_segment_totals
DROP INDEX IF EXISTS segmentation.activity_changes_player_idx;
CREATE INDEX IF NOT EXISTS activity_changes_game_idx ON segmentation.activity_changes (game_id);
