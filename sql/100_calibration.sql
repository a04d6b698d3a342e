-- Taxonomy calibration, versions, rollback, feature sources, export/import.
-- PL/Python bodies are thin: they load the library once per session and call the
-- function of the same name in plpython/segmentation/sql_api.py.

CREATE OR REPLACE FUNCTION segmentation.calibrate_taxonomy(
    game_id text,
    lookback_days integer DEFAULT NULL,
    n_segments integer DEFAULT NULL,
    as_of date DEFAULT current_date,
    activate boolean DEFAULT true)
RETURNS jsonb
LANGUAGE plpython3u VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
if GD.get("segmentation.version") != "@VERSION@":
    plpy.execute("SELECT segmentation._python_bootstrap()")
    if "segmentation.unavailable" in GD:
        GD["segmentation.unavailable"]()
return GD["segmentation.api"].calibrate_taxonomy(plpy, GD, game_id, lookback_days, n_segments, as_of, activate)
$$;
COMMENT ON FUNCTION segmentation.calibrate_taxonomy(text, integer, integer, date, boolean) IS
    'Calibrate a new taxonomy version of a game from the last lookback_days of activity (or its registered feature source): named behavioral axes, soft segments, anomaly thresholds, quality. NULL arguments take the settings; n_segments => 0 chooses k automatically. Returns a summary.';

CREATE OR REPLACE FUNCTION segmentation.activate_taxonomy(taxonomy_id bigint)
RETURNS jsonb
LANGUAGE plpython3u VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
if GD.get("segmentation.version") != "@VERSION@":
    plpy.execute("SELECT segmentation._python_bootstrap()")
    if "segmentation.unavailable" in GD:
        GD["segmentation.unavailable"]()
return GD["segmentation.api"].activate_taxonomy(plpy, GD, taxonomy_id)
$$;
COMMENT ON FUNCTION segmentation.activate_taxonomy(bigint) IS
    'Make a taxonomy version the active one of its game (e.g. roll back to an earlier version). Atomic.';

CREATE OR REPLACE FUNCTION segmentation.taxonomy_history(game_id text)
RETURNS TABLE (taxonomy_id bigint, version integer, is_active boolean, calibrated_at timestamptz,
               calibrated_by name, as_of date, lookback_days integer, population integer,
               n_axes integer, n_segments integer, variance_explained double precision,
               silhouette double precision, stability_ari double precision,
               parent_taxonomy_id bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.taxonomy_id, t.version, t.is_active, t.calibrated_at, t.calibrated_by, t.as_of,
           t.lookback_days, t.population, t.n_axes, t.n_segments, t.variance_explained,
           (t.quality ->> 'silhouette')::float8, (t.quality ->> 'stability_ari')::float8,
           t.parent_taxonomy_id
      FROM segmentation.game_behavioral_taxonomy t
     WHERE t.game_id = taxonomy_history.game_id
     ORDER BY t.version DESC
$$;
COMMENT ON FUNCTION segmentation.taxonomy_history(text) IS
    'Taxonomy versions of a game, newest first, with status and quality.';

CREATE OR REPLACE FUNCTION segmentation.register_feature_source(
    game_id text, source regclass, player_column name DEFAULT 'player_id')
RETURNS jsonb
LANGUAGE plpython3u VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
if GD.get("segmentation.version") != "@VERSION@":
    plpy.execute("SELECT segmentation._python_bootstrap()")
    if "segmentation.unavailable" in GD:
        GD["segmentation.unavailable"]()
return GD["segmentation.api"].register_feature_source(plpy, GD, game_id, source, player_column)
$$;
COMMENT ON FUNCTION segmentation.register_feature_source(text, regclass, name) IS
    'Calibrate and categorize a game from a per-player table or view (one row per player; its numeric and boolean columns are the features) instead of player_activity.';

CREATE OR REPLACE FUNCTION segmentation.unregister_feature_source(game_id text)
RETURNS boolean
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH d AS (DELETE FROM segmentation.feature_sources f
                WHERE f.game_id = unregister_feature_source.game_id RETURNING 1)
    SELECT count(*) > 0 FROM d
$$;
COMMENT ON FUNCTION segmentation.unregister_feature_source(text) IS
    'Go back to player_activity for a game; true when a source was registered.';

CREATE OR REPLACE FUNCTION segmentation.export_taxonomy(taxonomy_id bigint)
RETURNS jsonb
LANGUAGE plpython3u STABLE
SET search_path = pg_catalog, pg_temp
AS $$
if GD.get("segmentation.version") != "@VERSION@":
    plpy.execute("SELECT segmentation._python_bootstrap()")
    if "segmentation.unavailable" in GD:
        GD["segmentation.unavailable"]()
return GD["segmentation.api"].export_taxonomy(plpy, GD, taxonomy_id)
$$;
COMMENT ON FUNCTION segmentation.export_taxonomy(bigint) IS
    'The taxonomy as one jsonb document (format unified-segmentation/taxonomy) for import on another server.';

CREATE OR REPLACE FUNCTION segmentation.import_taxonomy(
    doc jsonb, game_id text DEFAULT NULL, activate boolean DEFAULT true)
RETURNS jsonb
LANGUAGE plpython3u VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
if GD.get("segmentation.version") != "@VERSION@":
    plpy.execute("SELECT segmentation._python_bootstrap()")
    if "segmentation.unavailable" in GD:
        GD["segmentation.unavailable"]()
return GD["segmentation.api"].import_taxonomy(plpy, GD, doc, game_id, activate)
$$;
COMMENT ON FUNCTION segmentation.import_taxonomy(jsonb, text, boolean) IS
    'Store an exported taxonomy document as a new version (of its game, or of game_id) and activate it unless activate => false.';
