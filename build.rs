//! refinery's `embed_migrations!` lists `migrations/` when the crate
//! compiles; cargo would not notice a file added there later, and the binary
//! would go on without it. Watching the directory rebuilds the crate.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
