-- tally: tables, the analyst view and the shipped session kinds.
-- Everything here is shape; the rules that span rows live in the Rust triggers
-- bound in triggers.sql.

CREATE TABLE tally.plans (
    plan_id                  text PRIMARY KEY CONSTRAINT plans_plan_id_not_empty CHECK (plan_id <> ''),
    display_name             text NOT NULL,
    practice_sessions_limit  integer CONSTRAINT plans_practice_sessions_limit_not_negative CHECK (practice_sessions_limit >= 0),
    assessments_limit        integer CONSTRAINT plans_assessments_limit_not_negative CHECK (assessments_limit >= 0),
    period                   interval NOT NULL DEFAULT '1 month'
        CONSTRAINT plans_period_positive CHECK (tally.period_is_valid(period))
);
COMMENT ON TABLE tally.plans IS 'Subscription plans: per-period limits (NULL = unlimited) and the billing period length.';

CREATE TABLE tally.subscriptions (
    user_id        text PRIMARY KEY CONSTRAINT subscriptions_user_id_not_empty CHECK (user_id <> ''),
    plan_id        text NOT NULL REFERENCES tally.plans (plan_id),
    period_anchor  timestamptz NOT NULL DEFAULT now()
        CONSTRAINT subscriptions_period_anchor_finite CHECK (isfinite(period_anchor)),
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_plan_id_idx ON tally.subscriptions (plan_id);
COMMENT ON TABLE tally.subscriptions IS 'One subscription per user; billing periods are [period_anchor + k*period, period_anchor + (k+1)*period), computed in UTC.';

CREATE TABLE tally.session_kinds (
    kind     text PRIMARY KEY CONSTRAINT session_kinds_kind_not_empty CHECK (kind <> ''),
    counter  text NOT NULL
        CONSTRAINT session_kinds_counter_known CHECK (counter IN ('practice_sessions', 'assessments', 'none'))
);
COMMENT ON TABLE tally.session_kinds IS 'Maps every session kind to the counter it uses. Unknown kinds are rejected: map a new kind here first, even if to none.';

INSERT INTO tally.session_kinds (kind, counter) VALUES
    ('practice', 'practice_sessions'),
    ('learning_plan', 'practice_sessions'),
    ('assessment', 'assessments');

-- Keys lead with user_id, the column tally.distribute() distributes by: on Citus every
-- key must include it. On one node the ids are also unique on their own
-- (learning_plans_learning_plan_id_key, sessions_session_id_key); Citus cannot
-- enforce that, and tally.distribute() drops those two constraints.
CREATE TABLE tally.learning_plans (
    learning_plan_id    uuid NOT NULL DEFAULT gen_random_uuid(),
    user_id             text NOT NULL REFERENCES tally.subscriptions (user_id) ON DELETE CASCADE,
    title               text NOT NULL DEFAULT '',
    total_sessions      integer CONSTRAINT learning_plans_total_sessions_positive CHECK (total_sessions > 0),
    completed_sessions  integer NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT learning_plans_pkey PRIMARY KEY (user_id, learning_plan_id),
    CONSTRAINT learning_plans_learning_plan_id_key UNIQUE (learning_plan_id)
);
-- Also the order a user's plans are listed in (tally.current_usage_document).
CREATE INDEX learning_plans_user_id_idx ON tally.learning_plans (user_id, created_at, learning_plan_id);
COMMENT ON COLUMN tally.learning_plans.completed_sessions IS 'Maintained by tally: the number of completed sessions of this plan.';

CREATE TABLE tally.sessions (
    session_id        uuid NOT NULL DEFAULT gen_random_uuid(),
    user_id           text NOT NULL
        CONSTRAINT sessions_user_id_fkey REFERENCES tally.subscriptions (user_id) ON DELETE CASCADE,
    kind              text NOT NULL
        CONSTRAINT sessions_kind_fkey REFERENCES tally.session_kinds (kind),
    learning_plan_id  uuid,
    status            text NOT NULL DEFAULT 'completed'
        CONSTRAINT sessions_status_known CHECK (status IN ('started', 'completed', 'abandoned')),
    started_at        timestamptz NOT NULL DEFAULT now(),
    completed_at      timestamptz,
    duration_seconds  integer CONSTRAINT sessions_duration_not_negative CHECK (duration_seconds >= 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sessions_pkey PRIMARY KEY (user_id, session_id),
    CONSTRAINT sessions_session_id_key UNIQUE (session_id),
    -- A session's learning plan must belong to the same user.
    CONSTRAINT sessions_learning_plan_same_user FOREIGN KEY (user_id, learning_plan_id)
        REFERENCES tally.learning_plans (user_id, learning_plan_id) ON DELETE CASCADE,
    CONSTRAINT sessions_started_at_finite CHECK (isfinite(started_at)),
    -- now() is the transaction start: a session may start at most 5 minutes ahead of it.
    CONSTRAINT sessions_started_at_not_in_future CHECK (started_at <= now() + interval '5 minutes'),
    CONSTRAINT sessions_completed_at_not_before_start CHECK (completed_at >= started_at),
    CONSTRAINT sessions_completed_has_completed_at CHECK (status <> 'completed' OR completed_at IS NOT NULL),
    CONSTRAINT sessions_started_has_no_completed_at CHECK (status <> 'started' OR completed_at IS NULL)
);
CREATE INDEX sessions_user_started_idx ON tally.sessions (user_id, started_at);
CREATE INDEX sessions_reservations_idx ON tally.sessions (user_id, started_at) WHERE status = 'started';
CREATE INDEX sessions_learning_plan_idx ON tally.sessions (user_id, learning_plan_id) WHERE learning_plan_id IS NOT NULL;
COMMENT ON TABLE tally.sessions IS 'Every practice session and assessment. Writing here is all it takes: tally keeps usage and learning plan counters exact in the same transaction.';

-- Derived data: written only by tally's triggers and tally.repair().
-- fillfactor leaves room for HOT updates of the hot counter rows.
CREATE TABLE tally.usage (
    user_id                 text NOT NULL,
    period_start            timestamptz NOT NULL,
    period_end              timestamptz NOT NULL,
    practice_sessions_used  integer NOT NULL DEFAULT 0,
    assessments_used        integer NOT NULL DEFAULT 0,
    -- The limit check's shortcut (extension/src/store/rows.rs, add_to_usage). Last, so
    -- that an updated database, which gets it by ADD COLUMN, has the same layout.
    started_bound           integer,
    PRIMARY KEY (user_id, period_start)
) WITH (fillfactor = 70);
COMMENT ON TABLE tally.usage IS 'Maintained by tally only: completed sessions per user and billing period. A missing row means zero usage.';
COMMENT ON COLUMN tally.usage.started_bound IS 'Maintained by tally only: at least the number of started sessions of metered kinds in the period, or NULL when not known. A limit check skips counting reservations when it is 0.';

CREATE TABLE tally.adjustments (
    adjustment_id  bigserial,
    adjusted_at    timestamptz NOT NULL DEFAULT now(),
    adjusted_by    text NOT NULL DEFAULT current_user,
    object         text NOT NULL CONSTRAINT adjustments_object_known CHECK (object IN ('usage', 'learning_plan')),
    object_id      text NOT NULL,
    period_start   timestamptz,
    counter        text NOT NULL,
    old_value      bigint NOT NULL,
    new_value      bigint NOT NULL,
    -- The user whose counter was corrected (the distribution column on Citus).
    user_id        text NOT NULL,
    CONSTRAINT adjustments_pkey PRIMARY KEY (user_id, adjustment_id)
);
COMMENT ON TABLE tally.adjustments IS 'Audit log: every counter tally.repair() corrected, when, by whom, old and new value.';

-- What tally.usage must hold, recounted from the sessions: the one definition of the
-- invariant that tally.verify(), tally.repair() and re-bucketing all read.
CREATE VIEW tally.usage_recount AS
SELECT x.user_id,
       tally.period_start_for(s.period_anchor, p.period, x.started_at) AS period_start,
       tally.period_end_for(s.period_anchor, p.period, x.started_at) AS period_end,
       (count(*) FILTER (WHERE k.counter = 'practice_sessions'))::integer AS practice_sessions_used,
       (count(*) FILTER (WHERE k.counter = 'assessments'))::integer AS assessments_used
FROM tally.sessions x
JOIN tally.session_kinds k ON k.kind = x.kind
JOIN tally.subscriptions s ON s.user_id = x.user_id
JOIN tally.plans p ON p.plan_id = s.plan_id
WHERE x.status = 'completed' AND k.counter <> 'none'
GROUP BY 1, 2, 3;
COMMENT ON VIEW tally.usage_recount IS 'Usage recounted from tally.sessions: what tally.usage holds when consistent (tally.verify() compares the two).';

COMMENT ON FUNCTION tally.reservation_timeout() IS 'How long a started session holds a reservation (setting tally.reservation_timeout, superuser-only).';

CREATE VIEW tally.current_usage AS
SELECT s.user_id,
       s.plan_id,
       tally.period_start_for(s.period_anchor, p.period, now()) AS period_start,
       tally.period_end_for(s.period_anchor, p.period, now()) AS period_end,
       coalesce(u.practice_sessions_used, 0) AS practice_sessions_used,
       p.practice_sessions_limit,
       -- greatest() skips NULLs, so an unlimited plan needs its own branch
       CASE WHEN p.practice_sessions_limit IS NOT NULL
            THEN greatest(p.practice_sessions_limit - coalesce(u.practice_sessions_used, 0) - coalesce(r.practice_in_progress, 0), 0)::integer
       END AS practice_sessions_remaining,
       coalesce(u.assessments_used, 0) AS assessments_used,
       p.assessments_limit,
       CASE WHEN p.assessments_limit IS NOT NULL
            THEN greatest(p.assessments_limit - coalesce(u.assessments_used, 0) - coalesce(r.assessments_in_progress, 0), 0)::integer
       END AS assessments_remaining
FROM tally.subscriptions s
JOIN tally.plans p ON p.plan_id = s.plan_id
-- The current period's bounds are written out where they are used: Citus pushes
-- this view down to the shards, and refuses a subquery without FROM that calls now().
LEFT JOIN tally.usage u
       ON u.user_id = s.user_id AND u.period_start = tally.period_start_for(s.period_anchor, p.period, now())
-- Grouped (one row or none): Citus refuses an ungrouped aggregate in a lateral
-- subquery that reads a reference table's column.
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE k.counter = 'practice_sessions') AS practice_in_progress,
           count(*) FILTER (WHERE k.counter = 'assessments') AS assessments_in_progress
    FROM tally.sessions x
    JOIN tally.session_kinds k ON k.kind = x.kind
    WHERE x.user_id = s.user_id
      AND x.status = 'started'
      AND x.started_at >= tally.period_start_for(s.period_anchor, p.period, now())
      AND x.started_at < tally.period_end_for(s.period_anchor, p.period, now())
      AND x.started_at > now() - tally.reservation_timeout()
    GROUP BY x.user_id
) r ON true;
COMMENT ON VIEW tally.current_usage IS 'One row per subscription for the billing period containing now(); *_remaining subtracts reservations held by started sessions.';

-- Each user's learning plans as the usage document lists them: in the order they
-- were created, with their progress. One row per user who has plans.
CREATE VIEW tally.learning_plan_lists AS
SELECT lp.user_id,
       json_agg(json_build_object('learning_plan_id', lp.learning_plan_id,
                                  'title', lp.title,
                                  'completed_sessions', lp.completed_sessions,
                                  'total_sessions', lp.total_sessions)
                ORDER BY lp.created_at, lp.learning_plan_id) AS learning_plans
FROM tally.learning_plans lp
GROUP BY lp.user_id;
COMMENT ON VIEW tally.learning_plan_lists IS 'Each user''s learning plans as tally.current_usage_document lists them (oldest first); no row for a user without plans. Filter by user_id.';

-- The usage document the HTTP API returns. Its shape is tally.build_usage_document's,
-- which also builds the document tally.record_session returns.
CREATE VIEW tally.current_usage_document AS
SELECT cu.user_id,
       tally.build_usage_document(cu.user_id, cu.plan_id, cu.period_start, cu.period_end,
                                  cu.practice_sessions_used, cu.practice_sessions_limit, cu.practice_sessions_remaining,
                                  cu.assessments_used, cu.assessments_limit, cu.assessments_remaining,
                                  l.learning_plans) AS document
FROM tally.current_usage cu
LEFT JOIN tally.learning_plan_lists l ON l.user_id = cu.user_id;
COMMENT ON VIEW tally.current_usage_document IS 'tally.current_usage and the user''s learning plans as one JSON document per subscription (the body of GET /v1/users/{user_id}/usage). Filter by user_id.';

-- Record a session and read the counters it moved, in one call (one round trip for
-- clients). Counting is done by the triggers as for any INSERT; this adds only the
-- idempotent retry, the backdating bound and the read after the write. Written in the
-- library (extension/src/answer/record.rs): its statements, prepared once per connection, are an INSERT
-- (ON CONFLICT DO NOTHING when the session has an id), tally.existing_session for a
-- retry and tally.refuse_backdating when not_before is given and started_at lies in
-- the past; its answer is written by tally.record_session_answer.
--
-- It runs with the caller's rights and search path, so every name in its statements
-- is qualified (pg_catalog's functions too) and their parameters are typed by OID: an
-- object in a schema the caller (or anyone) can write is never used instead. The
-- statements that need key-lookup planning, the backdating bound and the read of an
-- existing id, are functions of their own with those settings, run only when needed.
CREATE FUNCTION tally.record_session(
    user_id text,
    kind text,
    session_id uuid DEFAULT NULL,
    learning_plan_id uuid DEFAULT NULL,
    status text DEFAULT 'completed',
    started_at timestamptz DEFAULT NULL,
    completed_at timestamptz DEFAULT NULL,
    duration_seconds integer DEFAULT NULL,
    not_before timestamptz DEFAULT NULL)
RETURNS json
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'tally_record_session';
COMMENT ON FUNCTION tally.record_session(text, text, uuid, uuid, text, timestamptz, timestamptz, integer, timestamptz) IS
    'INSERT a session unless session_id exists (ON CONFLICT DO NOTHING); returns {created, session, usage}: whether it inserted, the stored session, and tally.current_usage_document for its user. started_at NULL means now(); NULL when the id existed but the row is gone. With not_before, a started_at before it or before the user''s current billing period is refused (TL008).';

-- record_session's backdating bound, for a caller that may not import history (an
-- end user's token): a backdated session may start no earlier than not_before, nor
-- before the user's current billing period, whose quota is the one that applies now.
-- Planned for key lookups: plans cached while the tables were tiny would otherwise
-- stay sequential scans as the tables grow, until the next ANALYZE.
CREATE FUNCTION tally.refuse_backdating(user_id text, started_at timestamptz, not_before timestamptz)
RETURNS void
LANGUAGE plpgsql STABLE
SET enable_seqscan = off
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    earliest timestamptz;
BEGIN
    SELECT tally.period_start_for(s.period_anchor, p.period, now()) INTO earliest
      FROM tally.subscriptions s JOIN tally.plans p ON p.plan_id = s.plan_id
     WHERE s.user_id = refuse_backdating.user_id;
    earliest := greatest(earliest, refuse_backdating.not_before);
    IF refuse_backdating.started_at < earliest THEN
        RAISE EXCEPTION USING
            ERRCODE = 'TL008',
            MESSAGE = format('started_at %s is too far in the past: this caller may backdate a session to %s at the earliest',
                             to_char(refuse_backdating.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                             to_char(earliest AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')),
            HINT = 'sessions older than that (or in an earlier billing period) are imported by a caller allowed to import history';
    END IF;
END
$fn$;
COMMENT ON FUNCTION tally.refuse_backdating(text, timestamptz, timestamptz) IS
    'record_session''s backdating bound: raises TL008 when started_at lies before not_before or before the user''s current billing period.';

-- The stored session with this id, for record_session's retry: the user's own, else
-- (on one node session ids are unique across users, sessions_session_id_key) another
-- user's, which the caller must refuse; on Citus ids are unique per user. NULLs when
-- there is none. Planned for key lookups, as refuse_backdating. It returns the
-- columns, not a tally.sessions row: tally.distribute() drops the workers' own copies
-- of the tables with CASCADE, which would take a function typed by a table's row
-- along, and the extension with it.
CREATE FUNCTION tally.existing_session(user_id text, session_id uuid,
    OUT stored_session_id uuid, OUT stored_user_id text, OUT stored_kind text,
    OUT stored_learning_plan_id uuid, OUT stored_status text, OUT stored_started_at timestamptz,
    OUT stored_completed_at timestamptz, OUT stored_duration_seconds integer,
    OUT stored_created_at timestamptz)
-- VOLATILE: each statement reads with a snapshot of its own, so a row committed
-- since the INSERT met it is seen.
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    SELECT x.session_id, x.user_id, x.kind, x.learning_plan_id, x.status, x.started_at,
           x.completed_at, x.duration_seconds, x.created_at
      INTO stored_session_id, stored_user_id, stored_kind, stored_learning_plan_id, stored_status,
           stored_started_at, stored_completed_at, stored_duration_seconds, stored_created_at
      FROM tally.sessions x
     WHERE x.user_id = existing_session.user_id AND x.session_id = existing_session.session_id;
    IF NOT FOUND THEN
        SELECT x.session_id, x.user_id, x.kind, x.learning_plan_id, x.status, x.started_at,
               x.completed_at, x.duration_seconds, x.created_at
          INTO stored_session_id, stored_user_id, stored_kind, stored_learning_plan_id, stored_status,
               stored_started_at, stored_completed_at, stored_duration_seconds, stored_created_at
          FROM tally.sessions x
         WHERE x.session_id = existing_session.session_id;
    END IF;
END
$fn$;
COMMENT ON FUNCTION tally.existing_session(text, uuid) IS
    'The stored session with this id, and its user: the user''s own, else another user''s; NULLs when there is none (record_session''s retry).';

-- The usage document for one user, planned for key lookups (see record_session),
-- with its own search path (likewise).
CREATE FUNCTION tally.usage_document(user_id text) RETURNS json
LANGUAGE plpgsql STABLE
SET enable_seqscan = off
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RETURN (SELECT d.document FROM tally.current_usage_document d WHERE d.user_id = usage_document.user_id);
END
$fn$;
COMMENT ON FUNCTION tally.usage_document(text) IS 'tally.current_usage_document for one user; NULL when the user has no subscription.';

-- pg_dump: user data is dumped; tally.usage is derived and rebuilt by the
-- triggers while sessions are restored, so it is not dumped (no double counting).
SELECT pg_catalog.pg_extension_config_dump('tally.plans', '');
SELECT pg_catalog.pg_extension_config_dump('tally.subscriptions', '');
SELECT pg_catalog.pg_extension_config_dump('tally.session_kinds',
    $$WHERE kind NOT IN ('practice', 'learning_plan', 'assessment')$$);
SELECT pg_catalog.pg_extension_config_dump('tally.learning_plans', '');
SELECT pg_catalog.pg_extension_config_dump('tally.sessions', '');
SELECT pg_catalog.pg_extension_config_dump('tally.adjustments', '');
SELECT pg_catalog.pg_extension_config_dump('tally.adjustments_adjustment_id_seq', '');
