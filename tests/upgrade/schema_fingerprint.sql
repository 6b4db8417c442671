-- Every object of the tally extension with its full definition, one line each, in
-- a stable order. pg_dump leaves extension members out, so upgrades are compared
-- on this instead: an upgraded database and a fresh install of the same version
-- must print the same lines. Privileges are shown for PUBLIC and the owner only: what
-- a site grants its own roles is its data, not the extension's schema.
WITH members AS (
    SELECT d.classid, d.objid, d.objsubid
      FROM pg_depend d JOIN pg_extension e ON d.refclassid = 'pg_extension'::regclass AND d.refobjid = e.oid
     WHERE e.extname = 'tally' AND d.deptype = 'e'
),
rels AS (
    SELECT c.oid, c.relname FROM pg_class c WHERE c.relnamespace = 'tally'::regnamespace
)
SELECT line FROM (
    SELECT 'member ' || pg_describe_object(classid, objid, objsubid) AS line FROM members
    UNION ALL
    SELECT 'extension ' || extversion || ' relocatable=' || extrelocatable
           || ' config=' || coalesce((SELECT string_agg(c::regclass::text, ',' ORDER BY c::regclass::text) FROM unnest(extconfig) c), '')
           || ' conditions=' || coalesce(array_to_string(extcondition, '|'), '')
      FROM pg_extension WHERE extname = 'tally'
    UNION ALL
    SELECT 'relation ' || r.relname || ' kind=' || c.relkind::text || ' options=' || coalesce(c.reloptions::text, '')
           || ' acl=' || (SELECT coalesce(string_agg(CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END || ':' || a.privilege_type, ',' ORDER BY 1), '')
                            FROM aclexplode(coalesce(c.relacl, acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char", c.relowner))) a WHERE a.grantee IN (0, c.relowner)) || ' comment=' || coalesce(obj_description(c.oid, 'pg_class'), '')
      FROM rels r JOIN pg_class c ON c.oid = r.oid
    UNION ALL
    SELECT 'column ' || r.relname || '.' || lpad(a.attnum::text, 3, '0') || ' ' || a.attname || ' '
           || format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
           || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '')
           || ' comment=' || coalesce(col_description(r.oid, a.attnum), '')
      FROM rels r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_attrdef ad ON ad.adrelid = r.oid AND ad.adnum = a.attnum
    UNION ALL
    SELECT 'constraint ' || r.relname || ' ' || co.conname || ' ' || pg_get_constraintdef(co.oid)
      FROM rels r JOIN pg_constraint co ON co.conrelid = r.oid
    UNION ALL
    SELECT 'index ' || pg_get_indexdef(i.indexrelid)
      FROM rels r JOIN pg_index i ON i.indrelid = r.oid
    UNION ALL
    SELECT 'event trigger ' || ev.evtname || ' on ' || ev.evtevent || ' tags=' || coalesce(array_to_string(ev.evttags, ','), '')
           || ' function=' || ev.evtfoid::regprocedure::text || ' enabled=' || ev.evtenabled::text
      FROM members m JOIN pg_event_trigger ev ON m.classid = 'pg_event_trigger'::regclass AND ev.oid = m.objid
    UNION ALL
    SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' enabled=' || t.tgenabled::text
      FROM rels r JOIN pg_trigger t ON t.tgrelid = r.oid AND NOT t.tgisinternal
    UNION ALL
    SELECT 'view ' || r.relname || ' ' || pg_get_viewdef(r.oid)
      FROM rels r JOIN pg_class c ON c.oid = r.oid AND c.relkind = 'v'
    UNION ALL
    SELECT 'function ' || p.oid::regprocedure
           || ' acl=' || (SELECT coalesce(string_agg(CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END || ':' || a.privilege_type, ',' ORDER BY 1), '')
                            FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a WHERE a.grantee IN (0, p.proowner))
           || ' comment=' || coalesce(obj_description(p.oid, 'pg_proc'), '') || E'\n'
           || CASE WHEN p.prokind = 'a' THEN '' ELSE pg_get_functiondef(p.oid) END
      FROM pg_proc p WHERE p.pronamespace = 'tally'::regnamespace
    UNION ALL
    SELECT 'schema tally acl=' || (SELECT coalesce(string_agg(CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END || ':' || a.privilege_type, ',' ORDER BY 1), '')
                                     FROM aclexplode(coalesce(nspacl, acldefault('n', nspowner))) a WHERE a.grantee IN (0, nspowner)) || ' comment=' || coalesce(obj_description(oid, 'pg_namespace'), '')
      FROM pg_namespace WHERE nspname = 'tally'
    UNION ALL
    SELECT 'shipped kind ' || kind || ' -> ' || counter FROM tally.session_kinds
     WHERE kind IN ('practice', 'learning_plan', 'assessment')
) fingerprint
ORDER BY line;
