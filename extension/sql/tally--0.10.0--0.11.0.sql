-- tally 0.10.0 -> 0.11.0: plans and kinds changed by logical replication are
-- forgotten by every connection that kept them. See CHANGELOG.md.
\echo Use "ALTER EXTENSION tally UPDATE TO '0.11.0'" to load this file. \quit

-- A logical-replication apply worker fires row triggers only (TRUNCATE's statement
-- triggers apart): the statement triggers plans_forget and session_kinds_forget
-- never fire for replicated changes, and a subscriber's connections kept the old
-- plan or kind. These row triggers send the same invalidation for each row.
CREATE FUNCTION tally.forget_plan_rows() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tally_forget_plan_rows';

CREATE FUNCTION tally.forget_session_kind_rows() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tally_forget_session_kind_rows';

-- Fired for every writer, replicated and replica-role writes included: ALWAYS. On a
-- Citus coordinator whose tables are distributed, the triggers go on the
-- coordinator's tables only (and each worker's, by its own update), as in 0.6.0:
-- Citus would create them on the workers' placements before their update has
-- created the functions. Counting on a shard does not keep plans or kinds.
DO $do$
DECLARE
    citus boolean := EXISTS (SELECT FROM pg_extension WHERE extname = 'citus');
    propagation text := current_setting('citus.enable_ddl_propagation', true);
BEGIN
    IF citus THEN
        PERFORM set_config('citus.enable_ddl_propagation', 'off', true);
    END IF;
    CREATE TRIGGER plans_forget_rows
        BEFORE INSERT OR UPDATE OR DELETE ON tally.plans
        FOR EACH ROW EXECUTE FUNCTION tally.forget_plan_rows();
    ALTER TABLE tally.plans ENABLE ALWAYS TRIGGER plans_forget_rows;
    CREATE TRIGGER session_kinds_forget_rows
        BEFORE INSERT OR UPDATE OR DELETE ON tally.session_kinds
        FOR EACH ROW EXECUTE FUNCTION tally.forget_session_kind_rows();
    ALTER TABLE tally.session_kinds ENABLE ALWAYS TRIGGER session_kinds_forget_rows;
    IF citus THEN
        PERFORM set_config('citus.enable_ddl_propagation', propagation, true);
    END IF;
END
$do$;

-- Like every trigger function of tally: no role may bind it elsewhere.
REVOKE ALL ON FUNCTION tally.forget_plan_rows(), tally.forget_session_kind_rows() FROM PUBLIC;
