//! Rebuild when a migration is added: `sqlx::migrate!` embeds `../migrations/*` at compile time,
//! but cargo only tracks the files a crate names, so a new migration file alone did not trigger a
//! rebuild and an incremental build ran without it (what sqlx's `migrate build-script` generates).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
