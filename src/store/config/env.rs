//! The environment variables the credential chains read, captured once as an explicit [`Env`].
//!
//! `object_store`'s `XxxBuilder::from_env()` reads the process environment itself. etlfs
//! reproduces it over this snapshot instead, for three reasons: credentials from the
//! environment must not mix with the file's (an ambient `AWS_SESSION_TOKEN` beside static keys
//! from the file breaks every signature; an ambient `GOOGLE_SERVICE_ACCOUNT` beside a key from
//! the file makes the GCS builder refuse to build); client options found in the environment
//! (proxy, ...) must land in the single `ClientOptions` handed over last, because
//! `with_client_options` replaces everything set before it; and tests can pass an empty
//! environment and run in parallel without depending on the machine's `AWS_*`/`GOOGLE_*`/
//! `AZURE_*` variables.

/// The environment variables the credential chains read, captured once. Tests build their own.
#[derive(Debug, Clone, Default)]
pub(super) struct Env {
    vars: Vec<(String, String)>,
}

impl Env {
    pub(super) fn process() -> Self {
        // Non-UTF-8 variables are skipped, as object_store's from_env() does.
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Env { vars }
    }

    /// An environment holding exactly `vars`.
    #[cfg(test)]
    pub(super) fn from_pairs(vars: &[(&str, &str)]) -> Self {
        Env {
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// The value of `name`; an empty value counts as unset, as in the credential chains.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every variable whose name starts with `prefix` (`AWS_`, `GOOGLE_`, `AZURE_`).
    pub(super) fn prefixed<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.vars
            .iter()
            .filter(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_values_count_as_unset_and_prefixes_select() {
        let env = Env::from_pairs(&[("AWS_REGION", ""), ("AWS_BUCKET", "b"), ("GOOGLE_X", "g")]);
        assert_eq!(env.get("AWS_REGION"), None);
        assert_eq!(env.get("AWS_BUCKET"), Some("b"));
        let aws: Vec<_> = env.prefixed("AWS_").map(|(k, _)| k).collect();
        assert_eq!(aws, ["AWS_REGION", "AWS_BUCKET"]);
    }
}
