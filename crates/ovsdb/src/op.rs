//! The operations of a `transact` request (RFC 7047 §5.2), typed, each with a short description
//! that an [`OvsdbError::Operation`](crate::OvsdbError::Operation) names when the server
//! refuses it.

use serde_json::{json, Map, Value};

/// A row (column name to value) of an `insert` or `update`.
pub type Row = Map<String, Value>;

/// A condition of a `where` clause: `[column, function, value]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The column.
    pub column: &'static str,
    /// `==`, `!=`, `includes`, `excludes`, `<`, ...
    pub function: &'static str,
    /// The value, as a datum.
    pub value: Value,
}

impl Condition {
    /// `[column, "==", value]`.
    pub fn eq(column: &'static str, value: Value) -> Condition {
        Condition {
            column,
            function: "==",
            value,
        }
    }

    /// `[column, "includes", value]`: a set column holding (at least) `value`.
    pub fn includes(column: &'static str, value: Value) -> Condition {
        Condition {
            column,
            function: "includes",
            value,
        }
    }

    fn to_json(&self) -> Value {
        json!([self.column, self.function, self.value])
    }
}

/// A mutation of a `mutate`: `[column, mutator, value]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    /// The column.
    pub column: &'static str,
    /// `insert`, `delete`, `+=`, ...
    pub mutator: &'static str,
    /// The operand.
    pub value: Value,
}

impl Mutation {
    /// Adds members to a set (or pairs to a map; existing keys are kept).
    pub fn insert(column: &'static str, value: Value) -> Mutation {
        Mutation {
            column,
            mutator: "insert",
            value,
        }
    }

    /// Removes members from a set (or, given a set of keys, pairs from a map).
    pub fn delete(column: &'static str, value: Value) -> Mutation {
        Mutation {
            column,
            mutator: "delete",
            value,
        }
    }

    /// Adds to an integer column.
    pub fn add(column: &'static str, n: i64) -> Mutation {
        Mutation {
            column,
            mutator: "+=",
            value: json!(n),
        }
    }

    fn to_json(&self) -> Value {
        json!([self.column, self.mutator, self.value])
    }
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Inserts a row; `uuid_name` lets later operations refer to it as `["named-uuid", name]`.
    Insert {
        /// Table.
        table: &'static str,
        /// The row.
        row: Row,
        /// Its name within the transaction (`[A-Za-z_][A-Za-z0-9_]*`).
        uuid_name: Option<String>,
        /// For errors: what the row is.
        what: String,
    },
    /// Reads the matching rows (only `columns`, if given).
    Select {
        /// Table.
        table: &'static str,
        /// Conditions (all must hold; none selects every row).
        conditions: Vec<Condition>,
        /// The columns to return.
        columns: Option<Vec<&'static str>>,
    },
    /// Sets columns of the matching rows.
    Update {
        /// Table.
        table: &'static str,
        /// Conditions.
        conditions: Vec<Condition>,
        /// The new values.
        row: Row,
        /// For errors: which row.
        what: String,
    },
    /// Mutates columns of the matching rows (set insert/delete, arithmetic) without reading
    /// them first: safe against writers touching other members of the same set.
    Mutate {
        /// Table.
        table: &'static str,
        /// Conditions.
        conditions: Vec<Condition>,
        /// The mutations, applied in order.
        mutations: Vec<Mutation>,
        /// For errors: which row.
        what: String,
    },
    /// Fails the transaction unless the matching rows, projected on `columns`, are exactly
    /// `rows` (`until: "=="`), immediately (`timeout: 0`): an optimistic-concurrency guard
    /// that what we read is still so.
    Wait {
        /// Table.
        table: &'static str,
        /// Conditions.
        conditions: Vec<Condition>,
        /// The columns compared.
        columns: Vec<&'static str>,
        /// The expected rows.
        rows: Vec<Row>,
        /// For errors: what is asserted.
        what: String,
    },
    /// A comment recorded with the transaction in the database log (`ovsdb-tool show-log`).
    Comment(String),
}

fn conditions_json(c: &[Condition]) -> Value {
    Value::Array(c.iter().map(Condition::to_json).collect())
}

impl Op {
    /// The operation as JSON.
    pub fn to_json(&self) -> Value {
        match self {
            Op::Insert {
                table,
                row,
                uuid_name,
                ..
            } => {
                let mut o = json!({"op": "insert", "table": table, "row": row});
                if let Some(n) = uuid_name {
                    o["uuid-name"] = json!(n);
                }
                o
            }
            Op::Select {
                table,
                conditions,
                columns,
            } => {
                let mut o =
                    json!({"op": "select", "table": table, "where": conditions_json(conditions)});
                if let Some(c) = columns {
                    o["columns"] = json!(c);
                }
                o
            }
            Op::Update {
                table,
                conditions,
                row,
                ..
            } => {
                json!({"op": "update", "table": table, "where": conditions_json(conditions), "row": row})
            }
            Op::Mutate {
                table,
                conditions,
                mutations,
                ..
            } => json!({
                "op": "mutate", "table": table, "where": conditions_json(conditions),
                "mutations": mutations.iter().map(Mutation::to_json).collect::<Vec<_>>(),
            }),
            Op::Wait {
                table,
                conditions,
                columns,
                rows,
                ..
            } => json!({
                "op": "wait", "table": table, "where": conditions_json(conditions),
                "columns": columns, "until": "==", "rows": rows, "timeout": 0,
            }),
            Op::Comment(c) => json!({"op": "comment", "comment": c}),
        }
    }

    /// A short description for error messages (`insert Interface qr-1a2b3c4d-5e`).
    pub fn describe(&self) -> String {
        match self {
            Op::Insert { table, what, .. } => format!("insert {table} {what}"),
            Op::Select { table, .. } => format!("select {table}"),
            Op::Update { table, what, .. } => format!("update {table} {what}"),
            Op::Mutate { table, what, .. } => format!("mutate {table} {what}"),
            Op::Wait { table, what, .. } => format!("wait {table} {what}"),
            Op::Comment(_) => "comment".to_owned(),
        }
    }

    /// Whether this is a concurrency guard ([`Op::Wait`]).
    pub fn is_guard(&self) -> bool {
        matches!(self, Op::Wait { .. })
    }
}

/// Builds a [`Row`] from pairs.
pub fn row<const N: usize>(pairs: [(&str, Value); N]) -> Row {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datum::{empty, named_uuid, set, string_map};

    // What `ovs-vsctl -vjsonrpc add-port br-int qr-1 -- set Interface qr-1 type=internal`
    // sends, trimmed to the operations we also use (OVS 3.1): insert with "uuid-name", mutate
    // with a "set" of "named-uuid", "wait" with "until" and "timeout".
    #[test]
    fn operations_encode_like_ovs_vsctl_sends_them() {
        let insert = Op::Insert {
            table: "Interface",
            row: row([
                ("name", json!("qr-1")),
                ("type", json!("internal")),
                ("external_ids", string_map([("iface-id", "p1")])),
                ("mtu_request", empty()),
            ]),
            uuid_name: Some("iface0".into()),
            what: "qr-1".into(),
        };
        assert_eq!(
            insert.to_json(),
            json!({"op": "insert", "table": "Interface", "uuid-name": "iface0",
                   "row": {"name": "qr-1", "type": "internal",
                           "external_ids": ["map", [["iface-id", "p1"]]],
                           "mtu_request": ["set", []]}})
        );
        assert_eq!(insert.describe(), "insert Interface qr-1");

        let mutate = Op::Mutate {
            table: "Bridge",
            conditions: vec![Condition::eq("name", json!("br-int"))],
            mutations: vec![Mutation::insert("ports", set([named_uuid("port0")]))],
            what: "br-int".into(),
        };
        assert_eq!(
            mutate.to_json(),
            json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", "br-int"]],
                   "mutations": [["ports", "insert", ["set", [["named-uuid", "port0"]]]]]})
        );

        let wait = Op::Wait {
            table: "Port",
            conditions: vec![Condition::eq("name", json!("qr-1"))],
            columns: vec!["_uuid"],
            rows: vec![],
            what: "qr-1 absent".into(),
        };
        assert_eq!(
            wait.to_json(),
            json!({"op": "wait", "table": "Port", "where": [["name", "==", "qr-1"]],
                   "columns": ["_uuid"], "until": "==", "rows": [], "timeout": 0})
        );
        assert!(wait.is_guard() && !mutate.is_guard());

        let select = Op::Select {
            table: "Open_vSwitch",
            conditions: vec![],
            columns: Some(vec!["cur_cfg"]),
        };
        assert_eq!(
            select.to_json(),
            json!({"op": "select", "table": "Open_vSwitch", "where": [], "columns": ["cur_cfg"]})
        );
        assert_eq!(
            Op::Mutate {
                table: "Open_vSwitch",
                conditions: vec![],
                mutations: vec![Mutation::add("next_cfg", 1)],
                what: String::new(),
            }
            .to_json()["mutations"],
            json!([["next_cfg", "+=", 1]])
        );
        assert_eq!(
            Op::Comment("l3agent".into()).to_json(),
            json!({"op": "comment", "comment": "l3agent"})
        );
    }
}
