//! The host's side of the compatibility rule: [`init_root_module`] checks a plugin's root
//! module against this crate's layout in whichever direction makes "a new host runs old
//! plugins" and "an old host runs new plugins" both true within 0.2.x.
//!
//! abi_stable's own check ([`LibHeader::init_root_module`]) accepts a plugin whose layout has
//! the same or *more* prefix fields, trait methods and `NonExhaustive` variants than the
//! host's, never fewer (measured in `shared/research/abi-growth.md` §1). For a plugin built
//! against an *earlier* 0.2.x this runs abi_stable's checker with the roles swapped: is the
//! plugin's layout a prefix of ours? Everything it lacks is then reached only through
//! accessors that check its own counts at run time (an `ROption` suffix field, a trait method
//! with a default body, an unknown `NonExhaustive` variant), so the host degrades instead of
//! reading past the plugin's tables (`abi-growth.md` §3.1, recipe chosen over frozen copies of
//! old layouts: one set of types and one code path, at the cost of an unsafe call whose
//! precondition is exactly what the swapped check verifies).

use abi_stable::StableAbi;
use abi_stable::abi_stability::abi_checking::{CheckingGlobals, check_layout_compatibility_with_globals};
use abi_stable::library::{LibHeader, LibraryError, RootModule};
use abi_stable::sabi_types::VersionNumber;

use crate::abi::PluginMod_Ref;

/// Checks and initializes the root module of a library opened with
/// `abi_stable::library::lib_header_from_path`, as the `portico` host loads every plugin.
///
/// - A plugin declaring an earlier version than this crate's, whose layout is a prefix of
///   ours: loaded (the swapped check).
/// - Otherwise abi_stable's own check: the same layout, or a later 0.2.x layout that extends
///   ours, loads; a plugin that grew without a version bump falls back to the swapped check.
/// - Anything else is refused with abi_stable's error: another 0.minor (for a 0.1 plugin,
///   [`LibraryError::IncompatibleVersionNumber`] naming both versions), a changed type.
///
/// # Errors
/// The declared version does not parse, or the layout is incompatible in both directions.
pub fn init_root_module(header: &'static LibHeader) -> Result<PluginMod_Ref, LibraryError> {
    let parse = |s| VersionNumber::new(s).map_err(LibraryError::ParseVersionError);
    let theirs = parse(header.version_strings())?;
    let ours = parse(PluginMod_Ref::VERSION_STRINGS)?;
    // The swapped check is for another 0.2.x; another 0.minor is refused by the normal one.
    let same_line = (theirs.major, theirs.minor) == (ours.major, ours.minor);
    let older = same_line && theirs.patch < ours.patch;
    if older && plugin_is_prefix(header) {
        // SAFETY: `plugin_is_prefix` ran abi_stable's full layout check with the plugin's
        // layout as the expected one: every type reachable from its root module is ours or a
        // prefix of ours (fewer suffix fields, trait methods or NonExhaustive variants, all
        // else identical, same 0.minor). Our code reaches what it lacks only through accessors
        // that check the plugin's own counts (`missing_field(option)`, default trait bodies,
        // `NonExhaustive::as_enum`). The library stays loaded for the life of the process.
        return unsafe { header.init_root_module_with_unchecked_layout::<PluginMod_Ref>() };
    }
    match header.init_root_module::<PluginMod_Ref>() {
        Err(LibraryError::AbiInstability(_)) if same_line && !older && plugin_is_prefix(header) => {
            // SAFETY: as above: a plugin that grew no further than a prefix of our layout
            // under the same version number.
            unsafe { header.init_root_module_with_unchecked_layout::<PluginMod_Ref>() }
        }
        other => other,
    }
}

/// Whether the plugin's root-module layout is a prefix of ours: abi_stable's checker with
/// the plugin's layout as the expected one.
///
/// The check runs with checking state of its own, not abi_stable's process-wide one: that
/// state keeps, per prefix type and `NonExhaustive` enum, the layout each check took as the
/// expected one, and a swapped check would leave the *older* layout there, so a later plugin
/// with exactly our layout was refused (`too many variants Expected: 6 Found: 5`; measured:
/// load an older plugin, then one of our own version). What the process-wide state protects —
/// libraries that agree with each other — is kept by the normal direction, which still uses it.
fn plugin_is_prefix(header: &'static LibHeader) -> bool {
    let own_state = CheckingGlobals::new();
    header.layout().is_some_and(|theirs| {
        check_layout_compatibility_with_globals(theirs, <PluginMod_Ref as StableAbi>::LAYOUT, &own_state).is_ok()
    })
}
