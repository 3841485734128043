//! Plugins: loading compiled applications ([`loader`]), the set currently serving and its
//! hot reload ([`registry`]), finding the plugin files and what changed among them
//! ([`scan`]), test-loading one in a child process ([`probe`]), and calling
//! one ([`call`]).
//!
//! Invariants:
//! - A plugin library is never unloaded: abi_stable never calls `dlclose`, and a request may
//!   still run code of an old version (see ARCHITECTURE.md, "Reload").
//! - A request holds an `Arc` of the [`loader::Plugin`] version it started on until its
//!   response ends, so a reload never takes code from under it.
//! - A reload that fails for a file leaves that file's previous version serving.

pub mod call;
pub mod loader;
pub mod probe;
pub(crate) mod registry;
pub(crate) mod scan;
