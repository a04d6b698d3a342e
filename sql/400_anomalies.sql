-- Anomalous players and taxonomy drift.

CREATE OR REPLACE FUNCTION segmentation.detect_anomalies(
    game_id text, as_of date DEFAULT current_date, min_score double precision DEFAULT NULL)
RETURNS TABLE (player_id text, anomaly_score double precision, kind text, reasons jsonb,
               nearest_segment text)
LANGUAGE plpython3u VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
if GD.get("segmentation.version") != "@VERSION@":
    plpy.execute("SELECT segmentation._python_bootstrap()")
    if "segmentation.unavailable" in GD:
        GD["segmentation.unavailable"]()
return GD["segmentation.api"].detect_anomalies(plpy, GD, game_id, as_of, min_score)
$$;
COMMENT ON FUNCTION segmentation.detect_anomalies(text, date, double precision) IS
    'Players of the window that fit no segment, worst first: kind off-axis (behaviour the axes do not explain) or outlier (far from every segment), with the features that contribute most. min_score defaults to 1 (the calibrated threshold).';

CREATE OR REPLACE FUNCTION segmentation.taxonomy_drift(game_id text, as_of date DEFAULT current_date)
RETURNS jsonb
LANGUAGE plpython3u VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
if GD.get("segmentation.version") != "@VERSION@":
    plpy.execute("SELECT segmentation._python_bootstrap()")
    if "segmentation.unavailable" in GD:
        GD["segmentation.unavailable"]()
return GD["segmentation.api"].taxonomy_drift(plpy, GD, game_id, as_of)
$$;
COMMENT ON FUNCTION segmentation.taxonomy_drift(text, date) IS
    'Compare the current window with the active taxonomy''s calibration population: PSI per feature and axis, segment share shifts, anomaly rate, variance still explained, and a verdict ok | watch | recalibrate with reasons.';

CREATE OR REPLACE VIEW segmentation.player_anomalies AS
SELECT c.game_id, c.player_id, c.taxonomy_id, c.segment_id AS nearest_segment_id,
       c.segment_name AS nearest_segment, c.anomaly_score, c.as_of, c.run_id
  FROM segmentation.player_current_segment c
 WHERE c.is_anomaly;
COMMENT ON VIEW segmentation.player_anomalies IS 'Anomalous players from the latest categorize_all, for BI (reasons: segmentation.detect_anomalies).';
COMMENT ON COLUMN segmentation.player_anomalies.game_id IS 'Game.';
COMMENT ON COLUMN segmentation.player_anomalies.player_id IS 'Player.';
COMMENT ON COLUMN segmentation.player_anomalies.taxonomy_id IS 'Taxonomy version that scored the player.';
COMMENT ON COLUMN segmentation.player_anomalies.nearest_segment_id IS 'Segment with the highest membership.';
COMMENT ON COLUMN segmentation.player_anomalies.nearest_segment IS 'Its name.';
COMMENT ON COLUMN segmentation.player_anomalies.anomaly_score IS 'Anomaly score (above 1 = anomalous).';
COMMENT ON COLUMN segmentation.player_anomalies.as_of IS 'Window end of the categorization.';
COMMENT ON COLUMN segmentation.player_anomalies.run_id IS 'categorize_all run.';
