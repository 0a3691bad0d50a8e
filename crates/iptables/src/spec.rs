//! The rules file of `l3agent iptables apply`: the complete desired state of one wrap name, as
//! YAML or JSON. Unknown fields are errors; every problem is reported with its path in the file.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use serde::Deserialize;

use crate::error::Error;
use crate::model::{Help, IptablesModel, ModelOptions, Prehashed, RuleSpec, Standby};
use crate::names::{ChainName, Family, Table, WrapName};

fn default_wrap() -> String {
    WrapName::default().as_str().to_owned()
}
fn yes() -> bool {
    true
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// Our chains are `<wrap_name>-<chain>` (default `neutron-l3-agent`'s own default, see
    /// [`WrapName::default`]). A file without any rule must name it: removing every rule of
    /// a wrap name is never what an empty-looking file means by accident.
    #[serde(default)]
    pub wrap_name: Option<String>,
    /// Neutron's constructor options.
    #[serde(default)]
    pub options: FileOptions,
    /// IPv4 tables.
    #[serde(default, deserialize_with = "l3agent_doc::explicit_value")]
    pub ipv4: FamilySpec,
    /// IPv6 tables.
    #[serde(default, deserialize_with = "l3agent_doc::explicit_value")]
    pub ipv6: FamilySpec,
}

/// `options:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOptions {
    /// See [`ModelOptions::state_less`].
    #[serde(default)]
    pub state_less: bool,
    /// See [`ModelOptions::nat`].
    #[serde(default = "yes")]
    pub nat: bool,
    /// See [`ModelOptions::ipv6`].
    #[serde(default = "yes")]
    pub ipv6: bool,
    /// See [`ModelOptions::comments`].
    #[serde(default = "yes")]
    pub comments: bool,
    /// See [`ModelOptions::filter_top`].
    #[serde(default)]
    pub filter_top_chain: Option<String>,
    /// See [`ModelOptions::postrouting_bottom`].
    #[serde(default)]
    pub postrouting_bottom_chain: Option<String>,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            state_less: false,
            nat: true,
            ipv6: true,
            comments: true,
            filter_top_chain: None,
            postrouting_bottom_chain: None,
        }
    }
}

/// `ipv4:` / `ipv6:`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamilySpec {
    /// `filter:`
    #[serde(default, deserialize_with = "l3agent_doc::explicit_some")]
    pub filter: Option<TableSpec>,
    /// `nat:`
    #[serde(default, deserialize_with = "l3agent_doc::explicit_some")]
    pub nat: Option<TableSpec>,
    /// `mangle:`
    #[serde(default, deserialize_with = "l3agent_doc::explicit_some")]
    pub mangle: Option<TableSpec>,
    /// `raw:`
    #[serde(default, deserialize_with = "l3agent_doc::explicit_some")]
    pub raw: Option<TableSpec>,
}

/// One table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// Wrapped chains (ours).
    #[serde(default, deserialize_with = "l3agent_doc::explicit_list")]
    pub chains: Vec<String>,
    /// Shared, unwrapped chains.
    #[serde(default, deserialize_with = "l3agent_doc::explicit_list")]
    pub unwrapped_chains: Vec<String>,
    /// Rules, in order.
    #[serde(default, deserialize_with = "l3agent_doc::explicit_list")]
    pub rules: Vec<RuleEntry>,
}

/// One rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleEntry {
    /// Chain (wrapped unless `wrap: false`).
    pub chain: String,
    /// Rule text.
    pub rule: String,
    /// Whether `chain` is wrapped.
    #[serde(default = "yes")]
    pub wrap: bool,
    /// Before the other rules.
    #[serde(default)]
    pub top: bool,
    /// `-m comment` text.
    #[serde(default)]
    pub comment: Option<String>,
    /// Tag.
    #[serde(default)]
    pub tag: Option<String>,
}

impl RulesFile {
    /// Builds the model, or every problem found (each with its path in the file).
    pub fn into_model(self) -> Result<IptablesModel, Vec<Error>> {
        self.into_model_on(crate::model::default_threads())
    }

    /// [`RulesFile::into_model`] reading the rules on at most `threads` threads.
    pub fn into_model_on(self, threads: usize) -> Result<IptablesModel, Vec<Error>> {
        self.into_model_helped(threads, None)
    }

    /// [`RulesFile::into_model_on`], with the threads of `standby` joining in once released.
    pub fn into_model_helped(
        self,
        threads: usize,
        standby: Option<&Standby>,
    ) -> Result<IptablesModel, Vec<Error>> {
        self.into_model_with(Help {
            threads,
            standby,
            feed: None,
        })
    }

    /// [`RulesFile::into_model`] with `help` (see [`Help`]).
    pub fn into_model_with(self, help: Help<'_>) -> Result<IptablesModel, Vec<Error>> {
        let mut errors = Vec::new();
        let rules = [&self.ipv4, &self.ipv6]
            .iter()
            .flat_map(|f| [&f.filter, &f.nat, &f.mangle, &f.raw])
            .flatten()
            .map(|t| t.rules.len())
            .sum::<usize>();
        if self.wrap_name.is_none() && rules == 0 {
            errors.push(Error::invalid(
                "wrap_name",
                "",
                "a file without rules removes every rule of its wrap name: name the wrap \
                 explicitly (wrap_name: <name>) to mean that",
            ));
        }
        let wrap_name = self.wrap_name.clone().unwrap_or_else(default_wrap);
        let wrap = WrapName::new(&wrap_name).map_err(|e| errors.push(e)).ok();
        let o = &self.options;
        let chain_opt = |field: &str, v: &Option<String>, default: &ChainName| match v {
            Some(v) => ChainName::new(field, v),
            None => Ok(default.clone()),
        };
        let defaults = ModelOptions::default();
        let filter_top = chain_opt(
            "options.filter_top_chain",
            &o.filter_top_chain,
            &defaults.filter_top,
        )
        .map_err(|e| errors.push(e))
        .ok();
        let bottom = chain_opt(
            "options.postrouting_bottom_chain",
            &o.postrouting_bottom_chain,
            &defaults.postrouting_bottom,
        )
        .map_err(|e| errors.push(e))
        .ok();
        let (Some(wrap), Some(filter_top), Some(postrouting_bottom)) = (wrap, filter_top, bottom)
        else {
            return Err(errors);
        };
        let options = ModelOptions {
            state_less: o.state_less,
            nat: o.nat,
            ipv6: o.ipv6,
            comments: o.comments,
            filter_top,
            postrouting_bottom,
        };
        let mut model = match IptablesModel::try_new(wrap, options) {
            Ok(m) => m,
            Err(e) => {
                errors.push(e.within("options"));
                return Err(errors);
            }
        };
        for (family, spec) in [(Family::V4, &self.ipv4), (Family::V6, &self.ipv6)] {
            let tables = [
                (Table::Filter, &spec.filter),
                (Table::Nat, &spec.nat),
                (Table::Mangle, &spec.mangle),
                (Table::Raw, &spec.raw),
            ];
            for (table, t) in tables {
                let Some(t) = t else { continue };
                let path = format!("{family}.{table}");
                if family == Family::V6 && !o.ipv6 {
                    errors.push(Error::invalid(
                        &path,
                        "",
                        "IPv6 is disabled (options.ipv6 is false)",
                    ));
                    continue;
                }
                if model.table(family, table).is_none() {
                    errors.push(Error::invalid(
                        &path,
                        "",
                        "this table is not managed with options.state_less",
                    ));
                    continue;
                }
                load_table(&mut model, family, table, t, &path, help, &mut errors);
            }
        }
        if errors.is_empty() {
            Ok(model)
        } else {
            Err(errors)
        }
    }
}

fn load_table(
    model: &mut IptablesModel,
    family: Family,
    table: Table,
    t: &TableSpec,
    path: &str,
    help: Help<'_>,
    errors: &mut Vec<Error>,
) {
    for (i, c) in t.chains.iter().enumerate() {
        if let Err(e) = model.add_chain(family, table, c, true) {
            errors.push(e.within(&format!("{path}.chains[{i}]")).strip_leaf());
        }
    }
    for (i, c) in t.unwrapped_chains.iter().enumerate() {
        if let Err(e) = model.add_chain(family, table, c, false) {
            errors.push(
                e.within(&format!("{path}.unwrapped_chains[{i}]"))
                    .strip_leaf(),
            );
        }
    }
    // Duplicates (same chain, placement, comment and words) are reported, not collapsed:
    // found through a hash of that identity, confirmed word by word.
    let identity = |r: &RuleEntry| {
        let mut h = std::hash::DefaultHasher::new();
        (&r.chain, r.wrap, r.top, &r.comment).hash(&mut h);
        for w in r.rule.split_whitespace() {
            w.hash(&mut h);
        }
        h.finish()
    };
    let same = |a: &RuleEntry, b: &RuleEntry| {
        a.chain == b.chain
            && a.wrap == b.wrap
            && a.top == b.top
            && a.comment == b.comment
            && a.rule.split_whitespace().eq(b.rule.split_whitespace())
    };
    // Every rule is read first (a duplicate too: it fails the file anyway, and the rules reach
    // a feed sooner without this pass in front); then duplicates are found.
    let specs: Vec<RuleSpec<'_>> = t
        .rules
        .iter()
        .map(|r| RuleSpec {
            chain: &r.chain,
            rule: &r.rule,
            wrap: r.wrap,
            top: r.top,
            tag: r.tag.as_deref(),
            comment: r.comment.as_deref(),
        })
        .collect();
    let results = model.add_rules_helped(family, table, &specs, help);
    // Problems by rule index, reported in file order; a duplicate's only problem is that.
    let mut found: Vec<(usize, Error)> = Vec::new();
    // The first rule of each identity hash; other rules with the same hash that are not the
    // same rule (a collision) in `more`.
    let mut seen: HashMap<u64, usize, Prehashed> =
        HashMap::with_capacity_and_hasher(t.rules.len(), Prehashed);
    let mut more: HashMap<u64, Vec<usize>, Prehashed> = HashMap::with_hasher(Prehashed);
    for ((i, r), result) in t.rules.iter().enumerate().zip(results) {
        let h = identity(r);
        let first = match seen.entry(h) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(i);
                None
            }
            std::collections::hash_map::Entry::Occupied(o) => {
                let j = *o.get();
                let others = more.entry(h).or_default();
                let first = std::iter::once(j)
                    .chain(others.iter().copied())
                    .find(|&j| same(&t.rules[j], r));
                if first.is_none() {
                    others.push(i);
                }
                first
            }
        };
        if let Some(first) = first {
            found.push((
                i,
                Error::invalid(
                    &format!("{path}.rules[{i}]"),
                    &r.rule,
                    format!("duplicate of {path}.rules[{first}]"),
                ),
            ));
            continue;
        }
        if let Err(e) = result {
            found.push((i, e.within(&format!("{path}.rules[{i}]"))));
        }
    }
    found.sort_by_key(|(i, _)| *i);
    errors.extend(found.into_iter().map(|(_, e)| e));
}

impl Error {
    /// For chain lists the value is the whole field: drop the inner `chain` leaf of the path.
    fn strip_leaf(self) -> Error {
        match self {
            Error::Invalid {
                field,
                value,
                reason,
            } => {
                let field = field.strip_suffix(".chain").unwrap_or(&field).to_owned();
                Error::Invalid {
                    field,
                    value,
                    reason,
                }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> Result<IptablesModel, Vec<Error>> {
        let f: RulesFile = serde_json::from_str(json)
            .map_err(|e| vec![Error::invalid("file", "", e.to_string())])?;
        f.into_model()
    }

    #[test]
    fn the_readme_example_loads() {
        let m = load(r#"{"wrap_name":"l3agent","options":{"state_less":false,"nat":true,"ipv6":true},
          "ipv4":{"filter":{"chains":["local","fw"],"unwrapped_chains":[],"rules":[
             {"chain":"INPUT","rule":"-p tcp --dport 22 -j ACCEPT","comment":"ssh"},
             {"chain":"FORWARD","rule":"-j $fw","top":true},
             {"chain":"neutron-filter-top","rule":"-j ACCEPT","wrap":false,"tag":"t1"}]},
           "nat":{"rules":[{"chain":"float-snat","rule":"-s 192.0.2.10/32 -j SNAT --to-source 203.0.113.50"}]}},
          "ipv6":{"filter":{"rules":[{"chain":"INPUT","rule":"-p ipv6-icmp -j ACCEPT"}]}}}"#)
        .unwrap();
        assert_eq!(
            m.rules(Family::V4, Table::Filter, "INPUT", true).unwrap(),
            ["-p tcp -m tcp --dport 22 -m comment --comment ssh -j ACCEPT"]
        );
        assert_eq!(
            m.rules(Family::V4, Table::Filter, "FORWARD", true).unwrap(),
            ["-j l3agent-fw"]
        );
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let errs = load(
            r#"{"ipv4":{"filter":{"chains":["a b"],"rules":[
             {"chain":"INPUT","rule":"-j ACCEPT\nCOMMIT"},
             {"chain":"INPUT","rule":"-j ACCEPT","comment":"x\"\u0000"},
             {"chain":"nope","rule":"-j ACCEPT"},
             {"chain":"INPUT","rule":"-j DROP"},
             {"chain":"INPUT","rule":"-j  DROP"}]}}}"#,
        )
        .unwrap_err();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 5, "{text:#?}");
        assert!(
            text[0].starts_with("ipv4.filter.chains[0]: invalid value \"a b\""),
            "{}",
            text[0]
        );
        assert!(
            text[1].starts_with("ipv4.filter.rules[0].rule: invalid value"),
            "{}",
            text[1]
        );
        assert!(text[1].contains("U+000A"), "{}", text[1]);
        assert!(
            text[2].starts_with("ipv4.filter.rules[1].comment"),
            "{}",
            text[2]
        );
        assert!(
            text[3].starts_with("ipv4.filter.rules[2].chain: unknown chain \"nope\""),
            "{}",
            text[3]
        );
        assert!(
            text[4].contains("duplicate of ipv4.filter.rules[3]"),
            "{}",
            text[4]
        );
    }

    /// A YAML rules file as `iptables apply` reads it; the error as `path: message`.
    fn read_yaml(text: &str) -> Result<RulesFile, String> {
        l3agent_doc::parse(
            text.as_bytes(),
            l3agent_doc::Format::Yaml,
            &l3agent_doc::Limits::default(),
            "wrap_name: <name> with no rules",
        )
        .map_err(|e| match e {
            l3agent_doc::DocError::Invalid { path, message } => format!("{path}: {message}"),
            other => other.to_string(),
        })
    }

    /// `key:` with no value is null in YAML. For a list or a mapping of the rules file that is
    /// an error naming the key, never "empty": the file is the complete desired state, and a
    /// stray edit would otherwise remove every rule of a chain, a table or a family.
    #[test]
    fn a_list_or_mapping_key_with_no_value_is_an_error_naming_it() {
        for (text, field) in [
            ("wrap_name: w\nipv4:\n", "ipv4"),
            ("wrap_name: w\nipv6:\n", "ipv6"),
            ("wrap_name: w\nipv4: ~\n", "ipv4"),
            ("wrap_name: w\nipv4:\n  filter:\n", "ipv4.filter"),
            ("wrap_name: w\nipv4:\n  nat:\n", "ipv4.nat"),
            ("wrap_name: w\nipv4:\n  mangle:\n", "ipv4.mangle"),
            ("wrap_name: w\nipv6:\n  raw:\n", "ipv6.raw"),
            (
                "wrap_name: w\nipv4:\n  filter:\n    rules:\n",
                "ipv4.filter.rules",
            ),
            (
                "wrap_name: w\nipv4:\n  filter:\n    chains:\n",
                "ipv4.filter.chains",
            ),
            (
                "wrap_name: w\nipv4:\n  nat:\n    unwrapped_chains:\n",
                "ipv4.nat.unwrapped_chains",
            ),
        ] {
            let e = read_yaml(text).expect_err(text);
            assert!(e.starts_with(&format!("{field}: ")), "{text:?}: {e}");
            assert!(e.contains("no value"), "{text:?}: {e}");
        }
        // The same in JSON.
        for (text, field) in [
            (r#"{"wrap_name":"w","ipv4":null}"#, "ipv4"),
            (r#"{"wrap_name":"w","ipv4":{"filter":null}}"#, "ipv4.filter"),
            (
                r#"{"wrap_name":"w","ipv4":{"filter":{"rules":null}}}"#,
                "ipv4.filter.rules",
            ),
        ] {
            let e = l3agent_doc::parse::<RulesFile>(
                text.as_bytes(),
                l3agent_doc::Format::Json,
                &l3agent_doc::Limits::default(),
                "x",
            )
            .expect_err(text)
            .to_string();
            assert!(e.contains(field) && e.contains("no value"), "{text}: {e}");
        }
        // Explicitly empty forms, and absent keys, still read.
        for text in [
            "wrap_name: w\nipv4: {}\n",
            "wrap_name: w\nipv4:\n  filter: {}\n",
            "wrap_name: w\nipv4:\n  filter:\n    rules: []\n    chains: []\n    unwrapped_chains: []\n",
            "wrap_name: w\n",
        ] {
            let f = read_yaml(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert!(f.into_model().is_ok(), "{text:?}");
        }
    }

    #[test]
    fn unknown_fields_and_disabled_sections() {
        assert!(serde_json::from_str::<RulesFile>(r#"{"wrap":"x"}"#).is_err());
        assert!(serde_json::from_str::<RulesFile>(
            r#"{"ipv4":{"filter":{"rules":[{"chain":"INPUT","rule":"-j ACCEPT","wrapp":true}]}}}"#
        )
        .is_err());
        let e =
            load(r#"{"wrap_name":"w","options":{"ipv6":false},"ipv6":{"filter":{}}}"#).unwrap_err();
        assert!(e[0].to_string().starts_with("ipv6.filter"), "{}", e[0]);
        let e = load(r#"{"wrap_name":"w","options":{"state_less":true},"ipv4":{"mangle":{}}}"#)
            .unwrap_err();
        assert!(e[0].to_string().starts_with("ipv4.mangle"), "{}", e[0]);
        let e = load(r#"{"wrap_name":"this-name-is-too-long"}"#).unwrap_err();
        assert!(e[0].to_string().starts_with("wrap_name"), "{}", e[0]);
    }

    #[test]
    fn filter_top_chain_input_is_an_error_not_a_panic() {
        // Used to panic (exit 101) in IptablesModel::new.
        let e = load(r#"{"wrap_name":"w","options":{"filter_top_chain":"INPUT"}}"#).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        let text = e[0].to_string();
        assert!(
            text.starts_with(
                "options.filter_top_chain: invalid value \"INPUT\": is a builtin chain"
            ),
            "{text}"
        );
        for (json, field) in [
            (
                r#"{"wrap_name":"l3agent","options":{"postrouting_bottom_chain":"POSTROUTING"}}"#,
                "options.postrouting_bottom_chain",
            ),
            (
                r#"{"wrap_name":"l3agent","options":{"filter_top_chain":"l3agent-x"}}"#,
                "options.filter_top_chain",
            ),
            (
                r#"{"wrap_name":"l3agent","options":{"filter_top_chain":"TOP"}}"#,
                "options.filter_top_chain",
            ),
            (
                r#"{"wrap_name":"w","options":{"filter_top_chain":"w-local"}}"#,
                "options.filter_top_chain",
            ),
        ] {
            let e = load(json).unwrap_err();
            assert!(e[0].to_string().starts_with(field), "{json}: {}", e[0]);
        }
        assert!(load(r#"{"wrap_name":"w","options":{"filter_top_chain":"my-top"}}"#).is_ok());
    }

    #[test]
    fn a_wrap_false_rule_into_an_undeclared_chain_names_the_chain_field() {
        let e = load(
            r#"{"ipv4":{"filter":{"unwrapped_chains":["shared"],"rules":[
             {"chain":"INPUT","rule":"-j ACCEPT","wrap":false},
             {"chain":"shared","rule":"-j ACCEPT","wrap":false},
             {"chain":"neutron-filter-top","rule":"-j DROP","wrap":false},
             {"chain":"DOCKER","rule":"-j ACCEPT","wrap":false}]}}}"#,
        )
        .unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].to_string()
                .starts_with("ipv4.filter.rules[3].chain: invalid value \"DOCKER\""),
            "{}",
            e[0]
        );
    }

    #[test]
    fn rule_comment_and_tag_errors_name_their_field() {
        let e = load(
            r#"{"ipv4":{"filter":{"rules":[
             {"chain":"INPUT","rule":"-p tcp --modp /bin/sh -j ACCEPT"},
             {"chain":"INPUT","rule":"-j ACCEPT","comment":"l3agent:l3agent:0123456789abcdef"},
             {"chain":"INPUT","rule":"-j DROP","tag":"a\u202eb"},
             {"chain":"INPUT","rule":"-m comment --comment \"x\u200by\" -j RETURN"}]}}}"#,
        )
        .unwrap_err();
        let text: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 4, "{text:#?}");
        assert!(
            text[0].starts_with("ipv4.filter.rules[0].rule: ") && text[0].contains("--modprobe"),
            "{}",
            text[0]
        );
        assert!(
            text[1].starts_with("ipv4.filter.rules[1].comment: "),
            "{}",
            text[1]
        );
        assert!(
            text[2].starts_with("ipv4.filter.rules[2].tag: ") && text[2].contains("U+202E"),
            "{}",
            text[2]
        );
        assert!(
            text[3].starts_with("ipv4.filter.rules[3].rule: ") && text[3].contains("U+200B"),
            "{}",
            text[3]
        );
    }

    #[test]
    fn a_file_without_rules_must_name_its_wrap() {
        for text in [
            r#"{}"#,
            r#"{"options": {"nat": true}}"#,
            r#"{"ipv4": {"filter": {"chains": ["fw"]}}}"#,
        ] {
            let e = load(text).unwrap_err();
            assert!(e[0].to_string().starts_with("wrap_name: "), "{}", e[0]);
        }
        assert!(load(r#"{"wrap_name": "l3agent"}"#).is_ok());
    }
}
