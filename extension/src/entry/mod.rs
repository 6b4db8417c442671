//! Where PostgreSQL calls in: the `entry!` seam every trigger function goes through
//! (its binding checked first, then the database's release, then the body, and a
//! returned error raised with tally's own SQLSTATE).

pub(crate) mod binding;
pub(crate) mod errors;
pub(crate) mod served;

/// Defines the C entry point PostgreSQL calls for a trigger function declared in
/// `sql/triggers.sql`: checks that it fired through its own binding (see
/// `binding.rs`) and that this library serves the database's release (see
/// `served.rs`), runs the Rust body under pgrx's guard (so PostgreSQL errors and
/// panics are reported as usual) and raises a returned [`errors::TallyError`].
///
/// `entry!(any_release, …)` skips the release check, for a function that reads
/// none of tally's tables and is right at every release.
macro_rules! entry {
    (any_release, $symbol:ident, $finfo:ident, $body:path, $binding:expr) => {
        $crate::entry::entry!(@define $symbol, $finfo, $body, $binding, $crate::entry::served_anyway);
    };
    ($symbol:ident, $finfo:ident, $body:path, $binding:expr) => {
        $crate::entry::entry!(@define $symbol, $finfo, $body, $binding, $crate::entry::served::check);
    };
    (@define $symbol:ident, $finfo:ident, $body:path, $binding:expr, $served:path) => {
        #[doc(hidden)]
        #[no_mangle]
        pub extern "C" fn $finfo() -> &'static ::pgrx::pg_sys::Pg_finfo_record {
            const V1: ::pgrx::pg_sys::Pg_finfo_record =
                ::pgrx::pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }

        #[doc(hidden)]
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $symbol(
            fcinfo: ::pgrx::pg_sys::FunctionCallInfo,
        ) -> ::pgrx::pg_sys::Datum {
            let outcome = unsafe {
                ::pgrx::pg_sys::panic::pgrx_extern_c_guard(|| {
                    let trigger = ::pgrx::PgTrigger::from_fcinfo(&*fcinfo)
                        .expect("tally trigger functions run only as triggers");
                    const BINDING: $crate::entry::binding::Binding = $binding;
                    BINDING
                        .check(stringify!($symbol), &trigger)
                        .and_then(|()| $served())
                        .and_then(|()| $body(&trigger))
                })
            };
            match outcome {
                Ok(datum) => datum,
                Err(error) => unsafe { $crate::entry::errors::raise(error) },
            }
        }
    };
}
pub(crate) use entry;

/// The release check of `entry!(any_release, …)`: none.
#[inline]
pub fn served_anyway() -> errors::TallyResult<()> {
    Ok(())
}
