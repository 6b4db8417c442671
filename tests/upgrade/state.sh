# The queries that print a filled database's state (tests/upgrade/fill.sql), compared
# before and after an update or a distribution: tally.verify()'s rows and every
# counter. Sourced by tests/upgrade.sh, tests/citus_inplace.sh and
# tests/citus_upgrade.sh.
# shellcheck shell=bash disable=SC2034
verify_rows="SELECT object || ' ' || id || ' ' || coalesce(period_start::text, '-') || ' ' || counter || ' ' || stored || ' ' || actual FROM tally.verify() ORDER BY 1"
counters="SELECT 'usage ' || user_id || ' ' || period_start || ' ' || practice_sessions_used || ' ' || assessments_used FROM tally.usage
          UNION ALL SELECT 'plan ' || learning_plan_id || ' ' || completed_sessions FROM tally.learning_plans ORDER BY 1"
