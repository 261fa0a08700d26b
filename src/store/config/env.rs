//! The environment variables the credential chains read, captured once as an explicit [`Env`],
//! and Thanos' `$(NAME)` substitution in the file, from the same snapshot.
//!
//! # `$(NAME)`
//!
//! Thanos reads `--objstore.config-file` with environment substitution (`extkingpin`'s
//! `expandEnv`), the Kubernetes convention for values taken from the pod's environment (a
//! secret mounted as an env var, say): every match of `\$\(([a-zA-Z_0-9]+)\)` anywhere in the
//! text — values, keys, comments alike, before the YAML is parsed — becomes the variable's
//! value, verbatim; a variable set to the empty string gives the empty string; a variable that
//! is not set stops the start with an error naming it. Anything else (`${NAME}`, `$NAME`,
//! `$(not-a-name)`) stays as written. etlfs does exactly that.
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

    /// `text` with every `$(NAME)` replaced by the variable's value (see the module
    /// documentation); the name of the first variable that is not set otherwise.
    pub(super) fn expand(&self, text: &str) -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find("$(") {
            out.push_str(&rest[..at]);
            let after = &rest[at + 2..];
            let len = after
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            if len > 0 && after.as_bytes().get(len) == Some(&b')') {
                let name = &after[..len];
                let value = self.lookup(name).ok_or_else(|| name.to_owned())?;
                out.push_str(value);
                rest = &after[len + 1..];
            } else {
                // Not a reference: kept, and the search goes on right after the `$(`.
                out.push_str("$(");
                rest = after;
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The value of `name` if it is set, empty or not (Go's `os.LookupEnv`).
    fn lookup(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
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

    #[test]
    fn dollar_paren_names_expand_as_thanos_does() {
        let env = Env::from_pairs(&[
            ("KEY", "s3cr3t"),
            ("EMPTY", ""),
            ("_9", "nine"),
            ("B", "$(KEY)"),
        ]);
        let cases = [
            ("secret_key: $(KEY)", "secret_key: s3cr3t"),
            ("a$(KEY)b$(KEY)", "as3cr3tbs3cr3t"),
            ("x: '$(EMPTY)'", "x: ''"),
            ("$(_9)", "nine"),
            // Values are not expanded again.
            ("$(B)", "$(KEY)"),
            // Not references: kept as written.
            (
                "${KEY} $KEY $(not-a-name) $() $(KEY",
                "${KEY} $KEY $(not-a-name) $() $(KEY",
            ),
            // The search goes on inside what was not a reference.
            ("$($(KEY))", "$(s3cr3t)"),
            ("$(AB$(KEY)", "$(ABs3cr3t"),
            ("ünï $(KEY) ✓", "ünï s3cr3t ✓"),
            ("", ""),
        ];
        for (text, want) in cases {
            assert_eq!(env.expand(text).as_deref(), Ok(want), "{text}");
        }
        assert_eq!(
            env.expand("a: $(KEY)\n# $(MISSING)\nb: $(OTHER)"),
            Err("MISSING".to_owned()),
            "a comment is text too, and the first unset name is the one named"
        );
    }
}
