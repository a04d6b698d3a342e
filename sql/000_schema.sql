-- Idempotent definitions, applied in file-name order on every install and upgrade.
-- The loader replaces @VERSION@ with the package version before running a file.

CREATE SCHEMA IF NOT EXISTS segmentation;
COMMENT ON SCHEMA segmentation IS 'Unified Segmentation @VERSION@: behavioral taxonomies, player segments and anomalies.';

CREATE OR REPLACE FUNCTION segmentation.version() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT '@VERSION@'::text $$;
COMMENT ON FUNCTION segmentation.version() IS 'Version of the installed SQL definitions.';
