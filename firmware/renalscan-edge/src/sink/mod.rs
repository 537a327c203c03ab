//! Where decisions and status go: the journal first (so what is printed or sent says
//! whether it is on disk), then stdout, then the cart link.

pub mod cartlink;
pub mod journal;
pub mod stdout;
