//! UIDs in the `2.25.<UUID as a decimal integer>` form (PS3.5 B.2): unique without a
//! registered root, and made once, when the object is made, so a resend is the same object.

/// A fresh `2.25.` UID (at most 64 characters: 5 + 39 digits).
pub fn new_uid() -> String {
    format!("2.25.{}", uuid::Uuid::new_v4().as_u128())
}

/// The `2.25.` UID derived from a name, the same every time (UUID v5-like, from the bytes of
/// `name` hashed with the crate's namespace): a device's observer UID from its id.
pub fn uid_for(name: &str) -> String {
    let u = uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes());
    format!("2.25.{}", u.as_u128())
}

/// renalscan's UUID namespace for derived UIDs.
const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6a1f_3c2e_9b0d_4e55_8a7c_5d2b_1e4f_9c03);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_valid_and_unique() {
        let a = new_uid();
        assert!(a.len() <= 64 && a.starts_with("2.25."));
        assert!(a[5..].bytes().all(|b| b.is_ascii_digit()));
        assert_ne!(a, new_uid());
        assert_eq!(uid_for("edge-01"), uid_for("edge-01"));
        assert_ne!(uid_for("edge-01"), uid_for("edge-02"));
    }
}
