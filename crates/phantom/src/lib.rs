//! Synthetic pediatric renal ultrasound (work in progress).
