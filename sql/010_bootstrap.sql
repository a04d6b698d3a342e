-- Loads the server-side Python library into the session (GD) once.
-- Every PL/Python function starts with:
--   if GD.get("segmentation.version") != "@VERSION@":
--       plpy.execute("SELECT segmentation._python_bootstrap()")
--       if "segmentation.unavailable" in GD:
--           GD["segmentation.unavailable"]()
-- so the import cost is paid once per backend, and a session that loaded an
-- older version fails cleanly instead of mixing two versions.
CREATE OR REPLACE FUNCTION segmentation._python_bootstrap() RETURNS text
LANGUAGE plpython3u VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
version = "@VERSION@"
loaded = GD.get("segmentation.version")
if loaded == version:
    return version


def unavailable(message, sqlstate, hint, detail=None):
    # Every function calls this one through SPI, so an error raised here would reach the
    # user as "plpy.SPIError: plpy.Error: <message>". Instead the caller, right after
    # this call, runs GD["segmentation.unavailable"], which raises the error in its own
    # frame as "segmentation: <message>" (see sql_api.sql_error). The loaded library is
    # left alone: functions of that version (after a rolled-back install, say) keep
    # working, and the next call of this version comes back here.
    error_class = type("segmentation", (plpy.Error,), {"__module__": "builtins"})

    def fail():
        exc = error_class(message)
        exc.sqlstate, exc.hint, exc.detail = sqlstate, hint, detail
        raise exc

    GD["segmentation.unavailable"] = fail
    return "unavailable: " + sqlstate


if loaded is not None:
    return unavailable(
        "the library was upgraded from %s to %s while this session was open" % (loaded, version),
        hint="Reconnect: a session never mixes two versions of the library.",
        sqlstate="SG010",
    )
import os
import sys

# The code in that directory runs inside the server as its OS user, so only a superuser
# may point a session elsewhere (SET, PGOPTIONS). Anyone else gets the value stored with
# ALTER DATABASE / ALTER ROLE ... SET (superuser-only for this parameter) or the default.
row = plpy.execute(
    "SELECT coalesce(nullif(pg_catalog.current_setting('segmentation.python_lib_dir', true), ''),"
    " '/usr/local/lib/segmentation') AS base,"
    " (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) AS superuser,"
    " coalesce((SELECT nullif(pg_catalog.substr(c, pg_catalog.strpos(c, '=') + 1), '')"
    "   FROM pg_catalog.pg_db_role_setting s, pg_catalog.unnest(s.setconfig) c"
    "  WHERE s.setdatabase IN (0, (SELECT d.oid FROM pg_catalog.pg_database d"
    "                              WHERE d.datname = pg_catalog.current_database()))"
    "    AND s.setrole IN (0, (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user))"
    "    AND pg_catalog.split_part(c, '=', 1) = 'segmentation.python_lib_dir'"
    "  ORDER BY s.setrole <> 0 DESC, s.setdatabase <> 0 DESC LIMIT 1),"
    " '/usr/local/lib/segmentation') AS stored"
)[0]
if not row["superuser"] and row["base"] != row["stored"]:
    return unavailable(
        "segmentation.python_lib_dir was changed for this session; only a superuser may do that",
        detail="session value %s, configured value %s" % (row["base"][:200], row["stored"][:200]),
        hint="RESET segmentation.python_lib_dir, or have a superuser run "
             "ALTER DATABASE ... SET segmentation.python_lib_dir.",
        sqlstate="SG011",
    )
lib_dir = os.path.join(row["base"], version)
if not os.path.isfile(os.path.join(lib_dir, "segmentation", "__init__.py")):
    return unavailable(
        "the server-side library for segmentation %s is missing" % version,
        detail="expected it in %s" % lib_dir,
        hint="Run 'segmentation install' on the database host, or set "
             "segmentation.python_lib_dir to the directory that holds %s/." % version,
        sqlstate="SG011",
    )
# Our directory first; user and system site-packages removed so a stray numpy
# or scikit-learn on the host can never shadow the pinned ones.
sys.path[:] = [lib_dir] + [
    p for p in sys.path
    if p != lib_dir and "site-packages" not in p and "dist-packages" not in p
]
for name in ("numpy", "scipy", "sklearn", "segmentation"):
    mod = sys.modules.get(name)
    if mod is not None and not str(getattr(mod, "__file__", "")).startswith(lib_dir):
        return unavailable(
            "%s was already imported from %s in this session" % (name, getattr(mod, "__file__", "?")),
            hint="Reconnect; do not import %s from other PL/Python functions before segmentation." % name,
            sqlstate="SG011",
        )
import segmentation
if segmentation.__version__ != version:
    return unavailable(
        "server-side library version %s does not match the installed SQL %s"
        % (segmentation.__version__, version),
        detail="library directory: %s" % lib_dir,
        hint="Run 'segmentation install' again so the library and SQL match.",
        sqlstate="SG010",
    )
from segmentation import sql_api
GD["segmentation.api"] = sql_api
GD["segmentation.lib_dir"] = lib_dir
GD["segmentation.version"] = version
GD.pop("segmentation.unavailable", None)
return version
$$;
COMMENT ON FUNCTION segmentation._python_bootstrap() IS
    'Internal: loads the pinned server-side Python library into this session.';
