//! The API's code is generated in `signet-proto`. What is left here:
//! `sqlx::migrate!` embeds migrations/ at compile time but cannot tell cargo
//! to rebuild when a migration file changes.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
