/*
 * segmentation.categorize_player(game_id text, features jsonb) in C.
 *
 * The request path of an ad-hoc feature vector. PL/Python cannot meet its speed bar
 * (issue #4: 0.7x the throughput of a primary-key SELECT): a PL/Python function that
 * does nothing at all already reaches only 0.74x here, and the per-call lookup of the
 * active taxonomy through plpy.execute takes it to 0.49x (BENCHMARKS.md).
 *
 * The math is not duplicated: the PL/Python function segmentation._scoring_kernel
 * (sql_api.scoring_kernel) precomputes, from the taxonomy in the model tables, the
 * same fused arrays the Python scorer uses (model._FastScorer); this file only runs
 * the O(p * (d + m + k d)) arithmetic on them and formats the answer the way
 * sql_api._answer does. Everything unusual - NULLs, unknown keys, non-numbers,
 * values beyond float8, a game without an active taxonomy - is handed to the
 * PL/Python implementation (segmentation._categorize_player_plpython), which names
 * the problem with its SQLSTATE and hint, so there is one definition of every error.
 *
 * Cache. One kernel per game per backend, replaced whole (never a mix of two
 * versions), re-read after segmentation.cache_ttl_seconds. A re-activation must be
 * seen at once, and an SPI lookup per call would cost a third of the throughput, so
 * the check per call is the relcache invalidation of game_behavioral_taxonomy: a
 * statement trigger (segmentation._taxonomy_changed, below) queues one on every write
 * of that table; it is delivered to every backend (and to hot standbys, through the
 * commit record) once the writer commits. Receiving one makes the next call look the
 * active id up again. A lookup is trusted for later calls only when it ran in a
 * transaction that started after the last invalidation was received: a snapshot
 * taken earlier may not see the commit that sent it.
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "common/shortest_dec.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "nodes/makefuncs.h"
#include "parser/parse_func.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/fmgrprotos.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

PG_MODULE_MAGIC;

#ifndef SEGMENTATION_VERSION
#define SEGMENTATION_VERSION "unknown"
#endif

/* Layout of segmentation._scoring_kernel's answer that this file reads. */
#define KERNEL_FORMAT 1

PG_FUNCTION_INFO_V1(categorize_features);
PG_FUNCTION_INFO_V1(taxonomy_changed);
PG_FUNCTION_INFO_V1(native_version);

/* One game's active taxonomy, as segmentation._scoring_kernel describes it. */
typedef struct Kernel
{
	MemoryContext cxt;			/* holds this struct and every array below */
	struct Kernel *next;
	char	   *game_id;
	int64		taxonomy_id;
	int32		version;
	TimestampTz expires_at;
	uint64		verified_seq;	/* invalidations received at the last lookup */
	bool		trusted;		/* that lookup's snapshot saw every commit before it */

	int			p_raw;			/* features in recipe order */
	int			p_kept;			/* features the model keeps */
	int			d;				/* axes */
	int			m;				/* off-axis coordinates */
	int			k;				/* segments */
	int			w;				/* columns of product: d + m + k * d */
	bool		activity;		/* activity recipe: rates follow from totals */

	/* Keys a caller may send, and what each one sets. */
	int			n_keys;
	char	  **keys;
	int		   *key_len;
	int		   *key_feature;	/* raw column, or -1 */
	int			n_metrics;
	int		   *metric_key;		/* key of metric j's name, or -1 */
	int		   *metric_total_key;	/* key of "<metric>_total", or -1 */
	int		   *metric_rate_key;	/* key of "<metric>_per_day", or -1 */
	int			active_key;		/* key "active_days", or -1 */

	/* Preparation of each kept column, then the fused product (p_kept + 1) x w. */
	int		   *gather;
	double	   *fill;
	double	   *lo;
	double	   *hi;
	bool	   *logged;
	double	   *product;

	/* Membership and anomaly models. */
	double	   *log_norm;		/* k */
	double	   *segment_offsets;	/* k x m */
	double	   *segment_scales; /* k */
	int		   *tail_start;		/* k + 1 offsets into the tail arrays */
	int		   *tail_axis;
	double	   *tail_direction;
	double	   *tail_mean;
	double	   *tail_chol;		/* d per tail term */
	double		residual_threshold;
	double		outlier_threshold;

	int32	   *segment_ids;
	char	  **segment_names;
	int		   *segment_name_len;
	int		   *segment_order;	/* segments in jsonb key order */
	char	  **axis_names;
	int		   *axis_name_len;
	int		   *axis_order;		/* axes in jsonb key order */
	bool		delegate_all;	/* duplicate names: let the PL/Python path answer */
} Kernel;

static Kernel *kernels = NULL;
static SPIPlanPtr lookup_plan = NULL;
static Oid	result_function = InvalidOid;
static Oid	result_type = InvalidOid;

/* Invalidation bookkeeping (see the header comment). */
static bool callbacks_registered = false;
static Oid	watched_relid = InvalidOid;
static uint64 inval_seq = 0;
static uint64 xact_ends = 0;
static uint64 xact_ends_at_inval = 0;

static void
relcache_changed(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == watched_relid)
	{
		inval_seq++;
		xact_ends_at_inval = xact_ends;
	}
}

static void
xact_ended(XactEvent event, void *arg)
{
	/* Only the events after which no call can run in the same transaction. */
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_PREPARE)
		xact_ends++;
}

static void
register_callbacks(void)
{
	if (callbacks_registered)
		return;
	CacheRegisterRelcacheCallback(relcache_changed, (Datum) 0);
	RegisterXactCallback(xact_ended, NULL);
	callbacks_registered = true;
}

/*
 * The PL/Python implementation, for every case this file does not answer itself.
 * Resolved on each use (rare): a reinstall may have recreated it.
 */
static Datum
delegate(FunctionCallInfo fcinfo)
{
	Oid			argtypes[2] = {TEXTOID, JSONBOID};
	Oid			fn;
	FmgrInfo	flinfo;
	Datum		result;

	LOCAL_FCINFO(inner, 2);

	fn = LookupFuncName(list_make2(makeString("segmentation"),
								   makeString("_categorize_player_plpython")),
						2, argtypes, false);
	fmgr_info(fn, &flinfo);
	InitFunctionCallInfoData(*inner, &flinfo, 2, PG_GET_COLLATION(), NULL, NULL);
	inner->args[0] = fcinfo->args[0];
	inner->args[1] = fcinfo->args[1];
	result = FunctionCallInvoke(inner);
	fcinfo->isnull = inner->isnull;
	return result;
}

static Kernel *
find_kernel(const char *game, int len)
{
	Kernel	   *kn;

	for (kn = kernels; kn != NULL; kn = kn->next)
		if (strncmp(kn->game_id, game, len) == 0 && kn->game_id[len] == '\0')
			return kn;
	return NULL;
}

static void
drop_kernel(Kernel *gone)
{
	Kernel	  **link;

	for (link = &kernels; *link != NULL; link = &(*link)->next)
		if (*link == gone)
		{
			*link = gone->next;
			MemoryContextDelete(gone->cxt);
			return;
		}
}

/* ---- reading segmentation._scoring_kernel's row ---- */

static Datum
column(HeapTuple tup, TupleDesc desc, const char *name)
{
	int			attno = SPI_fnumber(desc, name);
	bool		isnull;
	Datum		value;

	if (attno <= 0)
		elog(ERROR, "segmentation._scoring_kernel has no column %s", name);
	value = SPI_getbinval(tup, desc, attno, &isnull);
	if (isnull)
		elog(ERROR, "segmentation._scoring_kernel returned NULL for %s", name);
	return value;
}

static Datum *
array_elements(Datum value, Oid elemtype, int expected, const char *name)
{
	ArrayType  *arr = DatumGetArrayTypeP(value);
	int16		typlen;
	bool		typbyval;
	char		typalign;
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	deconstruct_array(arr, elemtype, typlen, typbyval, typalign, &elems, &nulls, &n);
	if (expected >= 0 && n != expected)
		elog(ERROR, "segmentation._scoring_kernel: %s has %d elements, expected %d",
			 name, n, expected);
	for (int i = 0; i < n; i++)
		if (nulls[i])
			elog(ERROR, "segmentation._scoring_kernel: %s has a NULL", name);
	return elems;
}

static double *
float8s(HeapTuple tup, TupleDesc desc, const char *name, int n)
{
	Datum	   *e = array_elements(column(tup, desc, name), FLOAT8OID, n, name);
	double	   *out = palloc(sizeof(double) * Max(n, 1));

	for (int i = 0; i < n; i++)
		out[i] = DatumGetFloat8(e[i]);
	return out;
}

static int *
int4s(HeapTuple tup, TupleDesc desc, const char *name, int n)
{
	Datum	   *e = array_elements(column(tup, desc, name), INT4OID, n, name);
	int		   *out = palloc(sizeof(int) * Max(n, 1));

	for (int i = 0; i < n; i++)
		out[i] = DatumGetInt32(e[i]);
	return out;
}

static char **
texts(HeapTuple tup, TupleDesc desc, const char *name, int n)
{
	Datum	   *e = array_elements(column(tup, desc, name), TEXTOID, n, name);
	char	  **out = palloc(sizeof(char *) * Max(n, 1));

	for (int i = 0; i < n; i++)
		out[i] = TextDatumGetCString(e[i]);
	return out;
}

/*
 * The order jsonb stores object keys in (shorter first, then bytewise), so that the
 * answer's objects are built without sorting; false if two names are equal.
 */
static bool
key_order(char **names, int n, int *len, int *order)
{
	for (int i = 0; i < n; i++)
	{
		int			j = i;

		len[i] = strlen(names[i]);
		while (j > 0)
		{
			int			o = order[j - 1];
			int			cmp = len[o] != len[i] ? (len[o] > len[i] ? 1 : -1)
				: memcmp(names[o], names[i], len[i]);

			if (cmp == 0)
				return false;
			if (cmp < 0)
				break;
			order[j] = o;
			j--;
		}
		order[j] = i;
	}
	return true;
}

/* Load taxonomy_id's kernel for game; the caller links it in. */
static Kernel *
load_kernel(const char *game, int64 taxonomy_id)
{
	Oid			argtypes[1] = {INT8OID};
	Datum		args[1];
	MemoryContext cxt;
	MemoryContext caller = CurrentMemoryContext;
	Kernel	   *kn;

	args[0] = Int64GetDatum(taxonomy_id);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT * FROM segmentation._scoring_kernel($1)",
							  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "segmentation._scoring_kernel(%lld) returned no row",
			 (long long) taxonomy_id);

	/* Filled in a context of its own, made permanent only once complete. */
	cxt = AllocSetContextCreate(caller, "segmentation scoring kernel", ALLOCSET_SMALL_SIZES);
	PG_TRY();
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		MemoryContext spi = MemoryContextSwitchTo(cxt);
		int		   *sizes;
		int			n_terms;
		double		ttl;

		kn = palloc0(sizeof(Kernel));
		kn->cxt = cxt;
		kn->game_id = pstrdup(game);
		if (DatumGetInt32(column(tup, desc, "format")) != KERNEL_FORMAT)
			elog(ERROR, "segmentation._scoring_kernel answers in format %d, this library "
				 "reads format %d", DatumGetInt32(column(tup, desc, "format")), KERNEL_FORMAT);
		kn->taxonomy_id = DatumGetInt64(column(tup, desc, "taxonomy_id"));
		kn->version = DatumGetInt32(column(tup, desc, "taxonomy_version"));
		ttl = DatumGetFloat8(column(tup, desc, "ttl_seconds"));
		kn->expires_at = GetCurrentStatementStartTimestamp() +
			(TimestampTz) (Max(ttl, 0.0) * 1e6);

		sizes = int4s(tup, desc, "sizes", 8);
		kn->p_raw = sizes[0];
		kn->p_kept = sizes[1];
		kn->d = sizes[2];
		kn->m = sizes[3];
		kn->k = sizes[4];
		kn->activity = sizes[5] != 0;
		kn->n_keys = sizes[6];
		kn->n_metrics = sizes[7];
		if (kn->p_raw < 1 || kn->p_kept < 1 || kn->d < 1 || kn->m < 0 || kn->k < 1 ||
			kn->n_keys < 1 || kn->n_metrics < 0 ||
			(kn->activity && kn->p_raw < 2 * kn->n_metrics))
			elog(ERROR, "segmentation._scoring_kernel: inconsistent sizes");
		kn->w = kn->d + kn->m + kn->k * kn->d;

		kn->keys = texts(tup, desc, "keys", kn->n_keys);
		kn->key_len = palloc(sizeof(int) * kn->n_keys);
		for (int i = 0; i < kn->n_keys; i++)
			kn->key_len[i] = strlen(kn->keys[i]);
		kn->key_feature = int4s(tup, desc, "key_feature", kn->n_keys);
		for (int i = 0; i < kn->n_keys; i++)
			if (kn->key_feature[i] < -1 || kn->key_feature[i] >= kn->p_raw)
				elog(ERROR, "segmentation._scoring_kernel: key_feature out of range");
		kn->metric_key = int4s(tup, desc, "metric_key", kn->n_metrics);
		kn->metric_total_key = int4s(tup, desc, "metric_total_key", kn->n_metrics);
		kn->metric_rate_key = int4s(tup, desc, "metric_rate_key", kn->n_metrics);
		for (int j = 0; j < kn->n_metrics; j++)
			if (kn->metric_key[j] < -1 || kn->metric_key[j] >= kn->n_keys ||
				kn->metric_total_key[j] < -1 || kn->metric_total_key[j] >= kn->n_keys ||
				kn->metric_rate_key[j] < -1 || kn->metric_rate_key[j] >= kn->n_keys)
				elog(ERROR, "segmentation._scoring_kernel: metric keys out of range");
		kn->active_key = DatumGetInt32(column(tup, desc, "active_key"));
		if (kn->active_key < -1 || kn->active_key >= kn->n_keys)
			elog(ERROR, "segmentation._scoring_kernel: active_key out of range");

		kn->gather = int4s(tup, desc, "gather", kn->p_kept);
		for (int i = 0; i < kn->p_kept; i++)
			if (kn->gather[i] < 0 || kn->gather[i] >= kn->p_raw)
				elog(ERROR, "segmentation._scoring_kernel: gather out of range");
		kn->fill = float8s(tup, desc, "fill", kn->p_kept);
		kn->lo = float8s(tup, desc, "lo", kn->p_kept);
		kn->hi = float8s(tup, desc, "hi", kn->p_kept);
		{
			Datum	   *e = array_elements(column(tup, desc, "logged"), BOOLOID,
										   kn->p_kept, "logged");

			kn->logged = palloc(sizeof(bool) * kn->p_kept);
			for (int i = 0; i < kn->p_kept; i++)
				kn->logged[i] = DatumGetBool(e[i]);
		}
		kn->product = float8s(tup, desc, "product", (kn->p_kept + 1) * kn->w);

		kn->log_norm = float8s(tup, desc, "log_norm", kn->k);
		kn->segment_offsets = float8s(tup, desc, "segment_offsets", kn->k * kn->m);
		kn->segment_scales = float8s(tup, desc, "segment_scales", kn->k);
		kn->tail_start = int4s(tup, desc, "tail_start", kn->k + 1);
		n_terms = kn->tail_start[kn->k];
		if (kn->tail_start[0] != 0 || n_terms < 0)
			elog(ERROR, "segmentation._scoring_kernel: tail_start is inconsistent");
		for (int j = 0; j < kn->k; j++)
			if (kn->tail_start[j + 1] < kn->tail_start[j])
				elog(ERROR, "segmentation._scoring_kernel: tail_start is inconsistent");
		kn->tail_axis = int4s(tup, desc, "tail_axis", n_terms);
		for (int t = 0; t < n_terms; t++)
			if (kn->tail_axis[t] < 0 || kn->tail_axis[t] >= kn->d)
				elog(ERROR, "segmentation._scoring_kernel: tail_axis out of range");
		kn->tail_direction = float8s(tup, desc, "tail_direction", n_terms);
		kn->tail_mean = float8s(tup, desc, "tail_mean", n_terms);
		kn->tail_chol = float8s(tup, desc, "tail_chol", n_terms * kn->d);
		kn->residual_threshold = DatumGetFloat8(column(tup, desc, "residual_threshold"));
		kn->outlier_threshold = DatumGetFloat8(column(tup, desc, "outlier_threshold"));

		kn->segment_ids = (int32 *) int4s(tup, desc, "segment_ids", kn->k);
		kn->segment_names = texts(tup, desc, "segment_names", kn->k);
		kn->axis_names = texts(tup, desc, "axis_names", kn->d);
		kn->segment_name_len = palloc(sizeof(int) * kn->k);
		kn->segment_order = palloc(sizeof(int) * kn->k);
		kn->axis_name_len = palloc(sizeof(int) * kn->d);
		kn->axis_order = palloc(sizeof(int) * kn->d);
		kn->delegate_all = !key_order(kn->segment_names, kn->k, kn->segment_name_len,
									  kn->segment_order) ||
			!key_order(kn->axis_names, kn->d, kn->axis_name_len, kn->axis_order);
		MemoryContextSwitchTo(spi);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(caller);
		MemoryContextDelete(cxt);
		PG_RE_THROW();
	}
	PG_END_TRY();
	SPI_finish();
	MemoryContextSetParent(cxt, TopMemoryContext);
	return kn;
}

/*
 * The game's kernel, current as of this call, or NULL when the game has no active
 * taxonomy. One indexed lookup of the active id; the kernel is reloaded only when
 * that id changed or the entry expired.
 */
static Kernel *
refresh_kernel(text *game_text, Kernel *old)
{
	uint64		seq = inval_seq;
	bool		trusted = inval_seq == 0 || xact_ends != xact_ends_at_inval;
	Datum		args[1];
	bool		found = false;
	int64		active_id = 0;
	Kernel	   *kn;
	char	   *game;

	register_callbacks();
	watched_relid = get_relname_relid("game_behavioral_taxonomy",
									  get_namespace_oid("segmentation", false));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (lookup_plan == NULL)
	{
		/* Schema-qualified to the operator: the function has no SET search_path. */
		Oid			argtypes[1] = {TEXTOID};
		SPIPlanPtr	plan = SPI_prepare(
			"SELECT t.taxonomy_id FROM segmentation.game_behavioral_taxonomy t"
			" WHERE t.game_id OPERATOR(pg_catalog.=) $1 AND t.is_active", 1, argtypes);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_keepplan failed");
		lookup_plan = plan;
	}
	args[0] = PointerGetDatum(game_text);
	if (SPI_execute_plan(lookup_plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "the active taxonomy lookup failed");
	if (SPI_processed == 1)
	{
		bool		isnull;

		active_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												SPI_tuptable->tupdesc, 1, &isnull));
		found = !isnull;
	}
	SPI_finish();
	if (!found)
		return NULL;

	kn = old;
	if (kn == NULL || kn->taxonomy_id != active_id ||
		GetCurrentStatementStartTimestamp() >= kn->expires_at)
	{
		game = text_to_cstring(game_text);
		kn = load_kernel(game, active_id);
		if (old != NULL)
			drop_kernel(old);
		kn->next = kernels;
		kernels = kn;
	}
	kn->verified_seq = seq;
	kn->trusted = trusted;
	return kn;
}

/* ---- one call ---- */

/*
 * The raw feature vector (p_raw, recipe order) from the caller's object, as
 * features.features_from_metric_vector computes it; false when the object needs
 * the careful path (anything but known keys with finite numbers).
 */
static bool
read_features(Kernel *kn, Jsonb *jb, double *raw)
{
	double	   *value = palloc(sizeof(double) * kn->n_keys);
	bool	   *present = palloc0(sizeof(bool) * kn->n_keys);
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			key = -1;

	if (!JB_ROOT_IS_OBJECT(jb) || JB_ROOT_IS_SCALAR(jb) || JB_ROOT_COUNT(jb) == 0)
		return false;
	it = JsonbIteratorInit(&jb->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			key = -1;
			for (int i = 0; i < kn->n_keys; i++)
				if (kn->key_len[i] == v.val.string.len &&
					memcmp(kn->keys[i], v.val.string.val, v.val.string.len) == 0)
				{
					key = i;
					break;
				}
			if (key < 0)
				return false;
		}
		else if (tok == WJB_VALUE)
		{
			double		x;

			if (v.type != jbvNumeric)
				return false;
			x = DatumGetFloat8(DirectFunctionCall1(numeric_float8_no_overflow,
												   NumericGetDatum(v.val.numeric)));
			if (!isfinite(x))
				return false;
			value[key] = x;
			present[key] = true;
		}
	}

	for (int i = 0; i < kn->p_raw; i++)
		raw[i] = get_float8_nan();
	for (int i = 0; i < kn->n_keys; i++)
		if (present[i] && kn->key_feature[i] >= 0)
			raw[kn->key_feature[i]] = value[i];
	if (kn->activity)
	{
		int			m = kn->n_metrics;
		bool		has_active = kn->active_key >= 0 && present[kn->active_key] &&
			value[kn->active_key] != 0.0;
		double		active = has_active ? value[kn->active_key] : 0.0;

		for (int j = 0; j < m; j++)
		{
			int			mk = kn->metric_key[j];
			int			tk = kn->metric_total_key[j];
			int			rk = kn->metric_rate_key[j];
			double		total;

			if (mk >= 0 && present[mk] && !(tk >= 0 && present[tk]))
				raw[j] = value[mk];
			total = raw[j];
			if (has_active && total == total && !(rk >= 0 && present[rk]))
				raw[m + j] = total / active;
		}
	}
	return true;
}

/*
 * A float as a jsonb number: the numeric that the PL/Python path's text gives, where
 * Python's repr() writes the shortest round-trip digits, in fixed notation from 1e-4
 * up to 1e16 with ".0" after a whole number, in exponent notation outside. Built from
 * those digits with int64_div_fast_to_numeric; numeric_in costs several times more.
 */
static void
jb_number(JsonbValue *v, double x)
{
	char		digits[DOUBLE_SHORTEST_DECIMAL_LEN];
	const char *c = digits;
	int64		mantissa = 0;
	int			exponent = 0;
	int			decimals = 0;
	int			significant = 0;
	bool		negative = false;
	bool		point = false;

	if (!isfinite(x))
		elog(ERROR, "categorize_player computed a non-finite number");
	double_to_shortest_decimal_buf(x, digits);
	v->type = jbvNumeric;
	if (*c == '-')
	{
		negative = true;
		c++;
	}
	for (; *c != '\0' && *c != 'e'; c++)
	{
		if (*c == '.')
			point = true;
		else if (*c >= '0' && *c <= '9')
		{
			mantissa = mantissa * 10 + (*c - '0');
			significant++;
			decimals += point;
		}
	}
	if (*c == 'e')
		exponent = atoi(c + 1);
	exponent -= decimals;
	/* Leading zeros count here: "0.000123..." may take the slow path too. */
	if (significant > 17 || fabs(x) >= 1e16)
	{
		v->val.numeric = DatumGetNumeric(DirectFunctionCall3(
			numeric_in, CStringGetDatum(digits), ObjectIdGetDatum(InvalidOid),
			Int32GetDatum(-1)));
		return;
	}
	if (negative)
		mantissa = -mantissa;
	if (exponent >= 0)
	{
		/* A whole number below 1e16: "<digits>.0", one decimal. */
		while (exponent-- > 0)
			mantissa *= 10;
		v->val.numeric = int64_div_fast_to_numeric(mantissa * 10, 1);
	}
	else
		v->val.numeric = int64_div_fast_to_numeric(mantissa, -exponent);
}

static void
jb_string(JsonbValue *v, const char *s, int len)
{
	v->type = jbvString;
	v->val.string.val = (char *) s;
	v->val.string.len = len;
}

/* An object of n pairs; the caller fills them in jsonb key order. */
static JsonbPair *
jb_object(JsonbValue *v, int n)
{
	v->type = jbvObject;
	v->val.object.nPairs = n;
	v->val.object.pairs = palloc(sizeof(JsonbPair) * Max(n, 1));
	for (int i = 0; i < n; i++)
		v->val.object.pairs[i].order = i;
	return v->val.object.pairs;
}

#define JB_KEY(pair, literal) jb_string(&(pair).key, literal, sizeof(literal) - 1)

/*
 * {name: number, ...} in key order (names and lengths from key_order); numbers[i]
 * is set to x[i]'s jsonb number, for reuse.
 */
static Datum
jb_named_numbers(char **names, int *len, int *order, int n, const double *x,
				 JsonbValue *numbers)
{
	JsonbValue	obj;
	JsonbPair  *pairs = jb_object(&obj, n);

	for (int i = 0; i < n; i++)
	{
		jb_string(&pairs[i].key, names[order[i]], len[order[i]]);
		jb_number(&pairs[i].value, x[order[i]]);
		numbers[order[i]] = pairs[i].value;
	}
	return JsonbPGetDatum(JsonbValueToJsonb(&obj));
}

Datum
categorize_features(PG_FUNCTION_ARGS)
{
	text	   *game;
	Kernel	   *kn;
	double	   *raw;
	double	   *row;
	double	   *out;
	double	   *maha;
	double	   *post;
	double	   *w;
	double	   *axis;
	double	   *y;
	int			d, m, k, p;
	int			n_bad = 0;
	int			primary = 0;
	int			runner = -1;
	int			first_axis, second_axis;
	double		top, total, residual, outlier, r, o, score, margin;
	bool		is_anomaly;
	const char *kind;
	TupleDesc	desc;
	Datum		values[10];
	bool		nulls[10] = {false};
	JsonbValue *numbers;
	HeapTuple	tuple;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		return delegate(fcinfo);
	game = PG_GETARG_TEXT_PP(0);

	/* The cheap check per call: has anyone written game_behavioral_taxonomy? */
	AcceptInvalidationMessages();
	kn = find_kernel(VARDATA_ANY(game), VARSIZE_ANY_EXHDR(game));
	if (kn == NULL || !kn->trusted || kn->verified_seq != inval_seq ||
		GetCurrentStatementStartTimestamp() >= kn->expires_at)
	{
		kn = refresh_kernel(game, kn);
		if (kn == NULL)
			return delegate(fcinfo);
	}

	raw = palloc(sizeof(double) * kn->p_raw);
	if (kn->delegate_all || !read_features(kn, PG_GETARG_JSONB_P(1), raw))
		return delegate(fcinfo);

	/* model._FastScorer.__call__, step by step. */
	d = kn->d;
	m = kn->m;
	k = kn->k;
	p = kn->p_kept;
	row = palloc(sizeof(double) * (p + 1));
	for (int i = 0; i < p; i++)
	{
		double		v = raw[kn->gather[i]];

		if (!isfinite(v))
		{
			n_bad++;
			v = kn->fill[i];
		}
		else if (v < kn->lo[i])
			v = kn->lo[i];
		else if (v > kn->hi[i])
			v = kn->hi[i];
		row[i] = kn->logged[i] ? log1p(v) : v;
	}
	row[p] = 1.0;
	out = palloc0(sizeof(double) * kn->w);
	for (int i = 0; i <= p; i++)
	{
		const double *prow = kn->product + (size_t) i * kn->w;
		double		ri = row[i];

		for (int c = 0; c < kn->w; c++)
			out[c] += ri * prow[c];
	}
	axis = out;
	y = out + d + m;

	maha = palloc(sizeof(double) * k);
	post = palloc(sizeof(double) * k);
	for (int j = 0; j < k; j++)
	{
		double		s = 0.0;

		for (int t = 0; t < d; t++)
			s += y[j * d + t] * y[j * d + t];
		maha[j] = s;
		post[j] = kn->log_norm[j] - 0.5 * s;
		if (j == 0 || post[j] > post[primary])
			primary = j;
	}
	top = post[primary];
	total = 0.0;
	for (int j = 0; j < k; j++)
	{
		post[j] = exp(post[j] - top);
		total += post[j];
	}
	total = 1.0 / total;
	for (int j = 0; j < k; j++)
		post[j] *= total;

	residual = 0.0;
	for (int t = 0; t < m; t++)
	{
		double		off = out[d + t] - kn->segment_offsets[primary * m + t];

		residual += off * off;
	}
	residual /= kn->segment_scales[primary];

	outlier = get_float8_infinity();
	w = palloc(sizeof(double) * d);
	for (int j = 0; j < k; j++)
	{
		double		dist = maha[j];
		bool		moved = false;

		for (int t = kn->tail_start[j]; t < kn->tail_start[j + 1]; t++)
		{
			double		delta = axis[kn->tail_axis[t]] - kn->tail_mean[t];

			if (delta * kn->tail_direction[t] > 0.0)
			{
				const double *src = moved ? w : y + j * d;
				const double *chol = kn->tail_chol + (size_t) t * d;

				for (int i = 0; i < d; i++)
					w[i] = src[i] - delta * chol[i];
				moved = true;
			}
		}
		if (moved)
		{
			dist = 0.0;
			for (int i = 0; i < d; i++)
				dist += w[i] * w[i];
		}
		if (dist < outlier)
			outlier = dist;
	}
	/* anomalies.AnomalyModel.classify_one */
	r = residual / kn->residual_threshold;
	o = outlier / kn->outlier_threshold;
	score = r >= o ? r : o;
	is_anomaly = score > 1.0;
	kind = !is_anomaly ? "none" : (r >= o ? "off-axis" : "outlier");

	/* sql_api._answer */
	for (int j = 0; j < k; j++)
		if (j != primary && (runner < 0 || post[j] > post[runner]))
			runner = j;
	first_axis = 0;
	for (int a = 1; a < d; a++)
		if (fabs(axis[a]) > fabs(axis[first_axis]))
			first_axis = a;
	second_axis = -1;
	for (int a = 0; a < d; a++)
		if (a != first_axis && (second_axis < 0 || fabs(axis[a]) > fabs(axis[second_axis])))
			second_axis = a;
	margin = post[primary] - (runner >= 0 ? post[runner] : 0.0);

	numbers = palloc(sizeof(JsonbValue) * Max(k, d));
	values[0] = Int64GetDatum(kn->taxonomy_id);
	values[1] = Int32GetDatum(kn->version);
	values[2] = Int32GetDatum(kn->segment_ids[primary]);
	values[3] = CStringGetTextDatum(kn->segment_names[primary]);
	values[4] = Float8GetDatum(post[primary]);

	values[5] = jb_named_numbers(kn->segment_names, kn->segment_name_len, kn->segment_order,
								 k, post, numbers);
	values[6] = jb_named_numbers(kn->axis_names, kn->axis_name_len, kn->axis_order, d, axis,
								 numbers);
	values[7] = Float8GetDatum(score);
	values[8] = BoolGetDatum(is_anomaly);
	{
		/* {"margin", "top_axes", "runner_up", "anomaly_kind", "imputed_features"} */
		JsonbValue	explanation;
		JsonbPair  *pairs = jb_object(&explanation, 5);
		JsonbValue *top_axes = &pairs[1].value;
		int			drivers[2] = {first_axis, second_axis};

		JB_KEY(pairs[0], "margin");
		jb_number(&pairs[0].value, margin);
		JB_KEY(pairs[1], "top_axes");
		top_axes->type = jbvArray;
		top_axes->val.array.rawScalar = false;
		top_axes->val.array.nElems = second_axis >= 0 ? 2 : 1;
		top_axes->val.array.elems = palloc(sizeof(JsonbValue) * 2);
		for (int i = 0; i < top_axes->val.array.nElems; i++)
		{
			JsonbPair  *driver = jb_object(&top_axes->val.array.elems[i], 2);

			JB_KEY(driver[0], "axis");
			jb_string(&driver[0].value, kn->axis_names[drivers[i]],
					  kn->axis_name_len[drivers[i]]);
			JB_KEY(driver[1], "score");
			driver[1].value = numbers[drivers[i]];	/* as in axis_scores */
		}
		JB_KEY(pairs[2], "runner_up");
		if (runner >= 0)
			jb_string(&pairs[2].value, kn->segment_names[runner],
					  kn->segment_name_len[runner]);
		else
			pairs[2].value.type = jbvNull;
		JB_KEY(pairs[3], "anomaly_kind");
		jb_string(&pairs[3].value, kind, strlen(kind));
		JB_KEY(pairs[4], "imputed_features");
		pairs[4].value.type = jbvNumeric;
		pairs[4].value.val.numeric = int64_to_numeric(n_bad);
		values[9] = JsonbPGetDatum(JsonbValueToJsonb(&explanation));
	}

	/* The typcache's descriptor of segmentation.categorization, without a copy. */
	if (fcinfo->flinfo->fn_oid != result_function)
	{
		result_type = get_func_rettype(fcinfo->flinfo->fn_oid);
		result_function = fcinfo->flinfo->fn_oid;
	}
	desc = lookup_rowtype_tupdesc(result_type, -1);
	tuple = heap_form_tuple(desc, values, nulls);
	ReleaseTupleDesc(desc);
	PG_RETURN_DATUM(HeapTupleGetDatum(tuple));
}

/*
 * Statement trigger on segmentation.game_behavioral_taxonomy: queue a relcache
 * invalidation of the table, which every backend receives once the writer commits
 * (and none if it rolls back); categorize_features then looks the active id up again.
 */
Datum
taxonomy_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("segmentation._taxonomy_changed() runs only as a trigger")));
	CacheInvalidateRelcacheByRelid(RelationGetRelid(trigdata->tg_relation));
	return PointerGetDatum(NULL);
}

/* The version this library was built for (the loader builds one per version). */
Datum
native_version(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(SEGMENTATION_VERSION));
}
