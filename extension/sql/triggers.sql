-- tally: trigger functions (Rust, in the extension library) and their bindings.
--
-- Functions that write counters run as the extension owner with a search path of
-- pg_catalog only, so that a writer role needs no privilege on tally.usage: the
-- rarely called ones by SECURITY DEFINER, the counting triggers (on every write)
-- by switching user in Rust, which costs less per call (extension/src/pg/privilege.rs).
-- The guard triggers on tally.usage and tally.learning_plans still reject every
-- write that does not come from tally's own code, superusers included.

CREATE FUNCTION tally.sessions_fill_completed_at() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tally_sessions_fill_completed_at';

CREATE FUNCTION tally.sessions_check_update() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tally_sessions_check_update';

CREATE FUNCTION tally.sessions_count_insert() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tally_sessions_count_insert';

CREATE FUNCTION tally.sessions_count_update() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tally_sessions_count_update';

CREATE FUNCTION tally.sessions_count_delete() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tally_sessions_count_delete';

CREATE FUNCTION tally.sessions_reject_truncate() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tally_sessions_reject_truncate';

CREATE FUNCTION tally.usage_reject_direct_write() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tally_usage_reject_direct_write';

CREATE FUNCTION tally.learning_plans_guard_counter() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tally_learning_plans_guard_counter';

CREATE FUNCTION tally.learning_plans_keep_completed() RETURNS trigger
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'tally_learning_plans_keep_completed';

CREATE FUNCTION tally.session_kinds_check_counter() RETURNS trigger
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'tally_session_kinds_check_counter';

CREATE FUNCTION tally.subscriptions_rebucket() RETURNS trigger
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'tally_subscriptions_rebucket';

CREATE FUNCTION tally.subscriptions_drop_usage() RETURNS trigger
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'tally_subscriptions_drop_usage';

CREATE FUNCTION tally.plans_rebucket() RETURNS trigger
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'tally_plans_rebucket';

CREATE FUNCTION tally.forget_plans() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tally_forget_plans';

CREATE FUNCTION tally.forget_session_kinds() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tally_forget_session_kinds';

CREATE FUNCTION tally.forget_plan_rows() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tally_forget_plan_rows';

CREATE FUNCTION tally.forget_session_kind_rows() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tally_forget_session_kind_rows';

-- sessions ------------------------------------------------------------------

-- Only rows without completed_at reach the function (imports that carry it never
-- call it); it checks the status itself. PostgreSQL parses a WHEN clause for every
-- statement, so it is kept to one test.
CREATE TRIGGER sessions_fill_completed_at
    BEFORE INSERT ON tally.sessions
    FOR EACH ROW WHEN (NEW.completed_at IS NULL)
    EXECUTE FUNCTION tally.sessions_fill_completed_at();

CREATE TRIGGER sessions_check_update
    BEFORE UPDATE ON tally.sessions
    FOR EACH ROW EXECUTE FUNCTION tally.sessions_check_update();

-- Counting is per statement: one aggregate over the transition table, one
-- counter write per (user, period) and per learning plan.
CREATE TRIGGER sessions_count_insert
    AFTER INSERT ON tally.sessions
    REFERENCING NEW TABLE AS tally_new
    FOR EACH STATEMENT EXECUTE FUNCTION tally.sessions_count_insert();

CREATE TRIGGER sessions_count_update
    AFTER UPDATE ON tally.sessions
    REFERENCING OLD TABLE AS tally_old NEW TABLE AS tally_new
    FOR EACH STATEMENT EXECUTE FUNCTION tally.sessions_count_update();

CREATE TRIGGER sessions_count_delete
    AFTER DELETE ON tally.sessions
    REFERENCING OLD TABLE AS tally_old
    FOR EACH STATEMENT EXECUTE FUNCTION tally.sessions_count_delete();

CREATE TRIGGER sessions_reject_truncate
    BEFORE TRUNCATE ON tally.sessions
    FOR EACH STATEMENT EXECUTE FUNCTION tally.sessions_reject_truncate();

-- usage ---------------------------------------------------------------------

CREATE TRIGGER usage_reject_direct_write
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON tally.usage
    FOR EACH STATEMENT EXECUTE FUNCTION tally.usage_reject_direct_write();

-- learning_plans ------------------------------------------------------------

CREATE TRIGGER learning_plans_guard_counter
    BEFORE INSERT OR UPDATE ON tally.learning_plans
    FOR EACH ROW EXECUTE FUNCTION tally.learning_plans_guard_counter();

CREATE TRIGGER learning_plans_keep_completed
    BEFORE DELETE ON tally.learning_plans
    FOR EACH ROW EXECUTE FUNCTION tally.learning_plans_keep_completed();

-- session_kinds, subscriptions, plans ---------------------------------------

CREATE TRIGGER session_kinds_check_counter
    BEFORE UPDATE ON tally.session_kinds
    FOR EACH ROW WHEN (OLD.counter IS DISTINCT FROM NEW.counter)
    EXECUTE FUNCTION tally.session_kinds_check_counter();

CREATE TRIGGER subscriptions_rebucket
    AFTER UPDATE ON tally.subscriptions
    FOR EACH ROW EXECUTE FUNCTION tally.subscriptions_rebucket();

CREATE TRIGGER subscriptions_drop_usage
    AFTER DELETE ON tally.subscriptions
    REFERENCING OLD TABLE AS tally_old
    FOR EACH STATEMENT EXECUTE FUNCTION tally.subscriptions_drop_usage();

CREATE TRIGGER plans_rebucket
    AFTER UPDATE ON tally.plans
    FOR EACH ROW WHEN (OLD.period IS DISTINCT FROM NEW.period)
    EXECUTE FUNCTION tally.plans_rebucket();

-- Counting keeps plans and kinds per connection (extension/src/store/catalog_cache.rs): any
-- write to either table tells every connection to forget them. ENABLE ALWAYS: the
-- cache must hear of writes made under session_replication_role = replica too.
CREATE TRIGGER plans_forget
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON tally.plans
    FOR EACH STATEMENT EXECUTE FUNCTION tally.forget_plans();
ALTER TABLE tally.plans ENABLE ALWAYS TRIGGER plans_forget;

CREATE TRIGGER session_kinds_forget
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON tally.session_kinds
    FOR EACH STATEMENT EXECUTE FUNCTION tally.forget_session_kinds();
ALTER TABLE tally.session_kinds ENABLE ALWAYS TRIGGER session_kinds_forget;

-- The same per row: a logical-replication subscriber's apply worker fires row
-- triggers only (TRUNCATE's statement triggers apart), so a plan or kind changed by
-- replication is forgotten too.
CREATE TRIGGER plans_forget_rows
    BEFORE INSERT OR UPDATE OR DELETE ON tally.plans
    FOR EACH ROW EXECUTE FUNCTION tally.forget_plan_rows();
ALTER TABLE tally.plans ENABLE ALWAYS TRIGGER plans_forget_rows;

CREATE TRIGGER session_kinds_forget_rows
    BEFORE INSERT OR UPDATE OR DELETE ON tally.session_kinds
    FOR EACH ROW EXECUTE FUNCTION tally.forget_session_kind_rows();
ALTER TABLE tally.session_kinds ENABLE ALWAYS TRIGGER session_kinds_forget_rows;

-- repair writes counters on the caller's behalf; only roles granted EXECUTE may run it.
REVOKE ALL ON FUNCTION tally.repair() FROM PUBLIC;

-- EXECUTE on a trigger function is all CREATE TRIGGER asks for, and firing a trigger
-- checks no privilege at all: tally's own triggers keep working for every writer,
-- while no other role can bind these functions anywhere. (Each also refuses to run
-- for any binding but its own; see extension/src/entry/binding.rs.)
REVOKE ALL ON FUNCTION
    tally.sessions_fill_completed_at(), tally.sessions_check_update(),
    tally.sessions_count_insert(), tally.sessions_count_update(), tally.sessions_count_delete(),
    tally.sessions_reject_truncate(), tally.usage_reject_direct_write(),
    tally.learning_plans_guard_counter(), tally.learning_plans_keep_completed(),
    tally.session_kinds_check_counter(), tally.subscriptions_rebucket(),
    tally.subscriptions_drop_usage(), tally.plans_rebucket(),
    tally.forget_plans(), tally.forget_session_kinds(),
    tally.forget_plan_rows(), tally.forget_session_kind_rows()
FROM PUBLIC;
