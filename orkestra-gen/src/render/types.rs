//! Named value types: structs with fields and enums of string values.

use serde::Serialize;

use super::fields::{FieldCtx, field_ctx, unknown_walker};
use super::{CG, docs};
use crate::model::*;
use crate::names::{doc_attrs, pascal, str_lit};

/// A named type: a struct with fields or an enum of string values.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum TypeCtx {
    Struct {
        name: String,
        doc: String,
        fields: Vec<FieldCtx>,
        /// Whether any field is checked by `check_into` (rules or nested structs).
        checked: bool,
        unknown: UnknownCtx,
    },
    Enum {
        name: String,
        doc: String,
        variants: Vec<VariantCtx>,
    },
}

/// A value of an enum type.
#[derive(Serialize)]
pub(super) struct VariantCtx {
    pub(super) ident: String,
    pub(super) wire: String,
    pub(super) doc: String,
}

/// A struct type's check for unknown keys (its JSON is read tolerantly by serde; commands
/// that use it check with this).
#[derive(Serialize)]
pub(super) struct UnknownCtx {
    /// Every wire name, as a list of literals.
    pub(super) known: String,
    /// Statements walking nested struct fields of `map`.
    pub(super) nested: Vec<String>,
}

pub(super) fn type_ctx(t: &TypeDef, here: &str) -> TypeCtx {
    let name = pascal(&t.name);
    let doc = docs(t.description.as_deref(), &format!("Type `{}`.", t.name));
    match &t.kind {
        TypeKind::Struct(t_fields) => {
            let fields: Vec<FieldCtx> = t_fields
                .iter()
                .map(|f| field_ctx(&name, f, true, here))
                .collect();
            TypeCtx::Struct {
                checked: fields.iter().any(|f| f.rules.is_some()),
                unknown: UnknownCtx {
                    known: fields
                        .iter()
                        .map(|f| f.wire.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    nested: t_fields
                        .iter()
                        .filter_map(|f| {
                            let walk = unknown_walker(&f.ty, here)?;
                            Some(format!(
                                "{CG}::unknown_in_field(map, {}, path, out, {walk});",
                                str_lit(&f.name)
                            ))
                        })
                        .collect(),
                },
                name,
                doc,
                fields,
            }
        }
        TypeKind::Enum(values) => TypeCtx::Enum {
            name,
            doc,
            variants: values
                .iter()
                .map(|v| VariantCtx {
                    ident: pascal(v),
                    wire: str_lit(v),
                    doc: doc_attrs(&format!("`{v}`")),
                })
                .collect(),
        },
    }
}
