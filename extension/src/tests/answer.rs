//! The usage document and `record_session`'s answer against PostgreSQL's own JSON.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::tests::*;

    /// The usage document escapes its strings in Rust: exactly as PostgreSQL's JSON
    /// functions do (to_json of a text), for every ASCII character and beyond.
    #[pg_test]
    fn usage_document_strings_are_escaped_as_postgres_escapes_them() {
        let mut samples: Vec<String> = (1u8..=127).map(|b| format!("a{}b", b as char)).collect();
        samples.push("Łódź 日本語 \u{1F600} \u{2028}".into());
        samples.push(String::new());
        for sample in samples {
            let expected = Spi::get_one_with_args::<String>(
                "SELECT to_json($1::text)::text",
                &[sample.clone().into()],
            )
            .unwrap()
            .unwrap();
            let mut ours = String::new();
            crate::answer::document::escape_json(&mut ours, &sample);
            assert_eq!(ours, expected, "{sample:?}");
        }
    }

    /// record_session's answer is written in Rust: exactly what json_build_object of
    /// row_to_json and the usage document writes, for NULLs, escaped text, uuids and
    /// timestamps in a time zone with a fractional offset.
    #[pg_test]
    fn record_session_answer_is_written_as_postgres_writes_it() {
        fixtures();
        run(
            r#"INSERT INTO tally.session_kinds VALUES (E'odd "kind"\n\t\u00e9 \\ \x01', 'practice_sessions')"#,
        );
        run(
            r#"INSERT INTO tally.learning_plans (learning_plan_id, user_id, title, total_sessions)
             VALUES ('0a000000-0000-4000-8000-00000000000f', 'kamile', 'Plan "A"', 10)"#,
        );
        run(
            r#"INSERT INTO tally.sessions (session_id, user_id, kind, learning_plan_id, status, started_at, completed_at, duration_seconds) VALUES
             ('ffffffff-ffff-4fff-bfff-ffffffffffff', 'kamile', 'practice', NULL, 'completed', now() - interval '1 hour', NULL, NULL),
             ('00000000-0000-4000-8000-000000000000', 'kamile', 'assessment', NULL, 'started', now() - interval '1.5 seconds', NULL, 0),
             ('0123abcd-4567-489a-bcde-f0123456789a', 'kamile', E'odd "kind"\n\t\u00e9 \\ \x01', '0a000000-0000-4000-8000-00000000000f',
              'completed', '2026-02-01 10:00:00.000001+00', '2026-02-01 10:30:00+00', 2147483647),
             ('0123abcd-4567-489a-bcde-f0123456789b', 'kamile', 'learning_plan', '0a000000-0000-4000-8000-00000000000f',
              'abandoned', now(), now(), 60)"#,
        );
        for zone in ["UTC", "America/St_Johns", "Asia/Kathmandu"] {
            run(&format!("SET LOCAL timezone = '{zone}'"));
            let differ = Spi::get_one::<i64>(
                "SELECT count(*) FROM tally.sessions x, (VALUES (true), (false)) c(created)
                  WHERE tally.record_session_answer(c.created, x.session_id, x.user_id, x.kind, x.learning_plan_id,
                                                    x.status, x.started_at, x.completed_at, x.duration_seconds,
                                                    x.created_at)::text
                        IS DISTINCT FROM json_build_object('created', c.created, 'session', row_to_json(x),
                                                           'usage', tally.usage_document(x.user_id))::text",
            )
            .unwrap();
            assert_eq!(differ, Some(0), "answers that differ in {zone}");
        }
        // A user without a subscription has no usage document: null, as before.
        let answer = Spi::get_one::<String>(
            "SELECT tally.record_session_answer(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)::text",
        )
        .unwrap();
        assert_eq!(
            answer.as_deref(),
            Some(
                r#"{"created" : null, "session" : {"session_id":null,"user_id":null,"kind":null,"learning_plan_id":null,"status":null,"started_at":null,"completed_at":null,"duration_seconds":null,"created_at":null}, "usage" : null}"#
            )
        );
        let expected = Spi::get_one::<String>(
            "SELECT json_build_object('created', true, 'session', row_to_json(x), 'usage', NULL::json)::text
               FROM (SELECT 'ffffffff-ffff-4fff-bfff-ffffffffffff'::uuid AS session_id, 'nobody'::text AS user_id,
                            'practice'::text AS kind, NULL::uuid AS learning_plan_id, 'completed'::text AS status,
                            now() AS started_at, now() AS completed_at, 5 AS duration_seconds, now() AS created_at) x",
        )
        .unwrap();
        let ours = Spi::get_one::<String>(
            "SELECT tally.record_session_answer(true, 'ffffffff-ffff-4fff-bfff-ffffffffffff', 'nobody', 'practice', NULL,
                                                'completed', now(), now(), 5, now())::text",
        )
        .unwrap();
        assert_eq!(ours, expected);
    }
}
