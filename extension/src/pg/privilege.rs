//! Running tally's own reads and writes as the extension owner, with a search path of
//! pg_catalog only: the effect of `SECURITY DEFINER SET search_path = pg_catalog`, so
//! that writer roles need no privilege on tally.usage and cannot redirect tally's SQL
//! through objects of their own. Done here instead of in the function definition
//! because a function-level SET costs a GUC save/restore and a search path
//! recomputation on every call, which the single-row insert path cannot afford
//! (how the path is swapped differs by major, crate::pg::majors). `CatalogSearchPath` is
//! the search path alone, for functions that run with the caller's rights.

use std::os::raw::c_int;

use pgrx::pg_sys;
use pgrx::PgTrigger;

use crate::pg::majors::{self, SearchPathToken};

/// A search path of pg_catalog only until dropped: the effect of `SET search_path =
/// pg_catalog, pg_temp` on a function (on 15 without a GUC save and restore; on 18
/// that is what it is, crate::pg::majors). Every name
/// in tally's SQL is schema-qualified except pg_catalog's, whose functions and
/// operators then cannot be shadowed by objects in a schema the caller's path lists
/// first.
#[must_use]
pub struct CatalogSearchPath {
    // Popped when dropped (crate::pg::majors).
    _token: SearchPathToken,
}

impl CatalogSearchPath {
    pub fn push() -> Self {
        CatalogSearchPath {
            _token: majors::push_catalog_search_path(),
        }
    }
}

#[must_use]
pub struct AsExtensionOwner {
    saved_user: pg_sys::Oid,
    saved_context: c_int,
    // Dropped after the user is restored, in Drop.
    _path: CatalogSearchPath,
}

impl AsExtensionOwner {
    /// Switches to the owner of the table the trigger fired on: tally's tables
    /// belong to the role that created the extension.
    pub fn for_trigger(trigger: &PgTrigger<'_>) -> Self {
        // SAFETY: the relation is open for the duration of the trigger call.
        let owner = unsafe { (*(*trigger.trigger_data().tg_relation).rd_rel).relowner };
        Self::switch_to(owner)
    }

    /// Switches to the owner of a relation (a view's owner, for what the view reads).
    pub fn of_relation(relation: pg_sys::Oid) -> Self {
        // SAFETY: the relation cache entry is held only while its owner is read.
        let owner = unsafe {
            let rel = pg_sys::RelationIdGetRelation(relation);
            assert!(!rel.is_null(), "tally: relation {relation:?} is gone");
            let owner = (*(*rel).rd_rel).relowner;
            pg_sys::RelationClose(rel);
            owner
        };
        Self::switch_to(owner)
    }

    fn switch_to(owner: pg_sys::Oid) -> Self {
        let mut saved_user = pg_sys::Oid::INVALID;
        let mut saved_context: c_int = 0;
        // SAFETY: plain reads and writes of backend-local state; restored in Drop, and
        // by PostgreSQL itself if the transaction aborts first.
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
            pg_sys::SetUserIdAndSecContext(
                owner,
                saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as c_int,
            );
        }
        AsExtensionOwner {
            saved_user,
            saved_context,
            _path: CatalogSearchPath::push(),
        }
    }
}

impl Drop for AsExtensionOwner {
    fn drop(&mut self) {
        // SAFETY: restores the user switch_to saved; the search path is popped
        // when the field is dropped, right after.
        unsafe {
            pg_sys::SetUserIdAndSecContext(self.saved_user, self.saved_context);
        }
    }
}
