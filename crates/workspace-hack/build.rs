// Present so that cargo takes the build-dependencies of Cargo.toml into account: they unify
// the features of the build scripts' dependencies too.
fn main() {}
