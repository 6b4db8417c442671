-- tally 0.5.0 -> 0.6.0: counting keeps plans and session kinds per connection; a
-- trigger on each table tells every connection to forget them on any write. See
-- CHANGELOG.md.
\echo Use "ALTER EXTENSION tally UPDATE TO '0.6.0'" to load this file. \quit

CREATE FUNCTION tally.forget_plans() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tally_forget_plans';

CREATE FUNCTION tally.forget_session_kinds() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'tally_forget_session_kinds';

-- Counting keeps plans and kinds per connection (extension/src/reference.rs): any
-- write to either table tells every connection to forget them. ENABLE ALWAYS: the
-- cache must hear of writes made under session_replication_role = replica too.
-- On a Citus coordinator whose tables are distributed, the triggers go on the
-- coordinator's tables only (and each worker's, by its own update): Citus would
-- create them on the workers' placements before their update has created the
-- functions. Counting on a shard does not keep plans or kinds (reference.rs).
DO $do$
DECLARE
    citus boolean := EXISTS (SELECT FROM pg_extension WHERE extname = 'citus');
    propagation text := current_setting('citus.enable_ddl_propagation', true);
BEGIN
    IF citus THEN
        PERFORM set_config('citus.enable_ddl_propagation', 'off', true);
    END IF;
    CREATE TRIGGER plans_forget
        BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON tally.plans
        FOR EACH STATEMENT EXECUTE FUNCTION tally.forget_plans();
    ALTER TABLE tally.plans ENABLE ALWAYS TRIGGER plans_forget;
    CREATE TRIGGER session_kinds_forget
        BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON tally.session_kinds
        FOR EACH STATEMENT EXECUTE FUNCTION tally.forget_session_kinds();
    ALTER TABLE tally.session_kinds ENABLE ALWAYS TRIGGER session_kinds_forget;
    IF citus THEN
        PERFORM set_config('citus.enable_ddl_propagation', propagation, true);
    END IF;
END
$do$;

REVOKE ALL ON FUNCTION tally.forget_plans(), tally.forget_session_kinds() FROM PUBLIC;
