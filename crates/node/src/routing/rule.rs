//! The routing rule, in one place: which subscription receives which record. The live
//! router and the replay window both ask it.

/// True when `destination` matches `pattern`: `*` is one segment (segments are split by
/// `.` and `/`), a final `#` any number of segments (zero included).
pub(crate) fn matches(pattern: &str, destination: &str) -> bool {
    let mut p = pattern.split(['.', '/']);
    let mut d = destination.split(['.', '/']);
    loop {
        match (p.next(), d.next()) {
            (Some("#"), _) => return p.next().is_none(),
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

pub(crate) fn is_pattern(destination: &str) -> bool {
    destination.split(['.', '/']).any(|s| s == "*" || s == "#")
}

/// A subscription to `subscription` covers records to `destination`: the same name, or
/// a wildcard pattern that matches it.
pub(crate) fn covers(subscription: &str, destination: &str) -> bool {
    subscription == destination || (is_pattern(subscription) && matches(subscription, destination))
}

/// Whether a subscription receives untargeted records: `/user/...` ones only ever
/// receive records addressed to their user or session.
pub(crate) fn takes_broadcast(subscription: &str) -> bool {
    !subscription.starts_with("/user/")
}

/// A record naming `record_user` may reach a connection of `conn_user`: when a record
/// names both a user and a session, the session must belong to the user.
pub(crate) fn user_allows(record_user: Option<&str>, conn_user: Option<&str>) -> bool {
    record_user.is_none() || record_user == conn_user
}

/// Where a record is addressed: its destination, and the user or session it targets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Addressed<'a> {
    pub(crate) destination: &'a str,
    pub(crate) user: Option<&'a str>,
    pub(crate) session: Option<&'a str>,
}

/// One subscription and its connection's identity.
pub(crate) struct Subscriber<'a> {
    pub(crate) destination: &'a str,
    pub(crate) user: Option<&'a str>,
    pub(crate) session: &'a str,
}

impl Subscriber<'_> {
    /// Untargeted records to subscriptions that take broadcasts, targeted ones (to this
    /// user or session) to any covering subscription.
    pub(crate) fn wants(&self, record: Addressed<'_>) -> bool {
        if !covers(self.destination, record.destination) {
            return false;
        }
        match (record.user, record.session) {
            (None, None) => takes_broadcast(self.destination),
            (_, Some(s)) if s != self.session => false,
            (u, _) => user_allows(u, self.user),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches("/topic/a.*", "/topic/a.b"));
        assert!(!matches("/topic/a.*", "/topic/a.b.c"));
        assert!(!matches("/topic/a.*", "/topic/a"));
        assert!(matches("/topic/a.#", "/topic/a"));
        assert!(matches("/topic/a.#", "/topic/a.b.c"));
        assert!(matches("/topic/*.x", "/topic/q.x"));
        assert!(!matches("/topic/a.b", "/topic/a.c"));
        assert!(is_pattern("/topic/a.*") && is_pattern("/topic/#") && !is_pattern("/topic/a"));
        assert!(covers("/topic/a", "/topic/a"));
        assert!(!covers("/topic/a", "/topic/b"));
        assert!(!takes_broadcast("/user/queue/q"));
    }
}
