//! The checks on a parsed input that the attribute syntax alone cannot
//! make: versions, names, aggregate ids, required keys, serde attributes
//! that would break decoding. Each error points at the offending token.

use std::collections::{HashMap, HashSet};

use proc_macro2::{Delimiter, Group, TokenStream};
use quote::{quote, ToTokens};
use syn::{Generics, LitStr, Path};

use crate::ast::{
    ident_string, AggregateInput, CommandInput, CommandShape, CommandVariant, EventInput,
    EventShape, EventVariant, ProjectionInput, Style,
};
use crate::attr::EventAttrs;
use crate::ctxt::Errors;

/// Checks the input of `#[derive(Event)]`.
pub(crate) fn event(cx: &mut Errors, input: &EventInput) {
    no_generics(cx, input.generics, "Event");
    check_event_attrs(cx, &input.attrs);
    let variants = match &input.shape {
        EventShape::Struct => return,
        EventShape::Enum(variants) => variants,
    };
    if variants.is_empty() {
        cx.error_spanned_by(
            input.ident,
            "an event enum needs at least one variant: each variant is a stored event type",
        );
    }
    for key in &input.serde {
        if let Some(why) = enum_serde_key(key) {
            cx.error_spanned_by(key, why);
        }
    }
    let mut first_with_name: HashMap<String, &EventVariant> = HashMap::new();
    for variant in variants {
        check_event_attrs(cx, &variant.attrs);
        for key in &variant.serde {
            if let Some(why) = variant_serde_key(key) {
                cx.error_spanned_by(key, why);
            }
        }
        let name = variant.event_type();
        if let Some(first) = first_with_name.get(&name) {
            let message = format!(
                "event type name `{name}` is already used by variant `{}`; \
                 give one of them another `#[event(name = \"...\")]`",
                first.ident
            );
            match &variant.attrs.name {
                Some(lit) => cx.error_spanned_by(lit, message),
                None => cx.error_spanned_by(variant.ident, message),
            }
        } else {
            first_with_name.insert(name, variant);
        }
    }
}

fn check_event_attrs(cx: &mut Errors, attrs: &EventAttrs) {
    if let Some(version) = &attrs.version {
        if version.value == 0 {
            cx.error_spanned_by(
                &version.lit,
                "schema versions start at 1: use `version = 1` or more",
            );
        }
    }
    if let Some(name) = &attrs.name {
        not_blank(cx, name, "an event type name");
    }
}

/// Why a container `#[serde(...)]` key cannot go on an event enum, if it
/// cannot. The derive hands serde each variant by its Rust name and its
/// fields alone, so serde must see the plain externally tagged enum.
fn enum_serde_key(key: &Path) -> Option<String> {
    let name = key.get_ident()?.to_string();
    let why = match name.as_str() {
        "tag" | "content" | "untagged" => format!(
            "`#[serde({name})]` cannot go on an event enum: the store keeps the event type \
             beside the payload, and the payload holds only the variant's fields; \
             name the stored event types with `#[event(name = \"...\")]` instead"
        ),
        "rename_all" => format!(
            "`#[serde({name})]` cannot go on an event enum: it renames the variants, which \
             the `Event` derive decodes by their Rust names; name the stored event types \
             with `#[event(name = \"...\")]` instead"
        ),
        _ => return None,
    };
    Some(why)
}

/// Why a variant `#[serde(...)]` key cannot go on an event variant, if it
/// cannot.
fn variant_serde_key(key: &Path) -> Option<String> {
    let name = key.get_ident()?.to_string();
    let why = match name.as_str() {
        "rename" | "alias" => format!(
            "`#[serde({name})]` cannot go on an event variant: the `Event` derive decodes \
             a variant by its Rust name; set the stored event type name with \
             `#[event(name = \"...\")]` instead"
        ),
        "skip" | "skip_serializing" | "skip_deserializing" => format!(
            "`#[serde({name})]` cannot go on an event variant: every variant is a stored \
             event type and must encode and decode; to store it under another name use \
             `#[event(name = \"...\")]`"
        ),
        "other" | "untagged" => format!(
            "`#[serde({name})]` cannot go on an event variant: the stored event type picks \
             the variant, and an unknown type is a decode error; list the stored names \
             with `#[event(name = \"...\")]` instead"
        ),
        _ => return None,
    };
    Some(why)
}

/// Checks the input of `#[derive(Command)]`.
pub(crate) fn command(cx: &mut Errors, input: &CommandInput) {
    no_generics(cx, input.generics, "Command");
    // A command type either names its aggregate in every variant, or in
    // none (then the caller names it: `execute_on(id, command)`).
    let routed = input.routed();
    match &input.shape {
        CommandShape::Struct(body) => command_target(cx, body, "struct", routed),
        CommandShape::Enum(variants) => {
            if variants.is_empty() {
                cx.error_spanned_by(
                    input.ident,
                    "a command enum needs at least one variant: each variant is a command type",
                );
            }
            for variant in variants {
                command_target(cx, variant, "variant", routed);
            }
        }
    }
}

/// Checks one command variant (or struct): a name, and, when the command
/// type names its aggregate, exactly one id field.
fn command_target(cx: &mut Errors, target: &CommandVariant, kind: &str, routed: bool) {
    if let Some(name) = &target.name {
        not_blank(cx, name, "a command type name");
    }
    if !routed {
        return;
    }
    let ident = target.ident;
    if target.style == Style::Unit {
        cx.error_spanned_by(
            ident,
            format!(
                "unit {kind} `{ident}` has no field to hold the aggregate id, while other \
                 variants have one: add a field named `id` or mark one with `#[command(id)]`"
            ),
        );
        return;
    }
    let mut marked = target.fields.iter().filter_map(|field| field.id.as_ref());
    let first = marked.next();
    for extra in marked {
        cx.error_spanned_by(
            extra,
            format!(
                "{kind} `{ident}` has more than one `#[command(id)]` field: \
                 mark only the field that holds the aggregate id"
            ),
        );
    }
    // A misspelt `#[command(...)]` key is reported already.
    let wrong_attr = target.fields.iter().any(|field| field.wrong_attr);
    if first.is_none() && target.id_field().is_none() && !wrong_attr {
        cx.error_spanned_by(
            ident,
            format!(
                "{kind} `{ident}` has no aggregate id, while other variants have one: \
                 add a field named `id` or mark one with `#[command(id)]`"
            ),
        );
    }
}

/// Checks the input of `#[derive(Aggregate)]`.
pub(crate) fn aggregate(cx: &mut Errors, input: &AggregateInput) {
    no_generics(cx, input.generics, "Aggregate");
    let attrs = &input.attrs;
    if let Some(name) = &attrs.name {
        not_blank(cx, name, "an aggregate type name");
        // A stream id is `"{aggregate type}-{id}"`, read back by splitting
        // at the first `-`: a `-` in the type would make that ambiguous.
        if name.value().contains('-') {
            cx.error_spanned_by(
                name,
                "an aggregate type name cannot contain `-`: streams are named \
                 `\"{type}-{id}\"` and the type is read back up to the first `-`; \
                 use `_` or `.` instead",
            );
        }
    }
    let missing: Vec<String> = ["event", "command", "error"]
        .into_iter()
        .filter(|key| !attrs.given.iter().any(|given| given == key))
        .map(|key| format!("`{key} = Type`"))
        .collect();
    let list = match missing.split_last() {
        None => return,
        Some((only, [])) => only.clone(),
        Some((last, init)) => format!("{} and {last}", init.join(", ")),
    };
    match attrs.original {
        Some(original) => {
            cx.error_spanned_by(original, format!("missing {list} in `#[aggregate(...)]`"));
        }
        None => cx.error_spanned_by(
            input.ident,
            "`#[derive(Aggregate)]` needs `#[aggregate(event = Type, command = Type, \
             error = Type)]` on the struct",
        ),
    }
}

/// Checks the input of `#[derive(Projection)]`.
pub(crate) fn projection(cx: &mut Errors, input: &ProjectionInput) {
    no_generics(cx, input.generics, "Projection");
    let attrs = &input.attrs;
    if let Some(name) = &attrs.name {
        not_blank(cx, name, "a projection name");
    }
    if let Some(list) = &attrs.apply {
        if list.entries.is_empty() && !list.wrong {
            // Spans `apply()` whole.
            let mut parens = Group::new(Delimiter::Parenthesis, TokenStream::new());
            parens.set_span(list.parens);
            let key = &list.key;
            cx.error_spanned_by(
                quote!(#key #parens),
                "`apply()` lists no variant: name each event variant the projection \
                 handles, like `apply(Opened = opened, Deposited)`",
            );
        }
        let mut seen = HashSet::new();
        for entry in &list.entries {
            let name = ident_string(&entry.variant);
            if !seen.insert(name.clone()) {
                cx.error_spanned_by(
                    &entry.variant,
                    format!(
                        "variant `{name}` is listed twice in `apply(...)`: \
                         a variant has one handler"
                    ),
                );
            }
        }
    }
    for handler in input.handlers() {
        if let Err(variant) = handler {
            let name = ident_string(variant);
            cx.error_spanned_by(
                variant,
                format!(
                    "the method name `{}` cannot be derived from variant `{name}`: \
                     name its handler with `{name} = method_name`",
                    crate::ast::snake_case(&name)
                ),
            );
        }
    }
    let missing: Vec<&str> = [
        ("event", "`event = Type`"),
        ("sink", "`sink = Type`"),
        ("apply", "`apply(Variant = method, ...)`"),
    ]
    .into_iter()
    .filter(|(key, _)| !attrs.given.iter().any(|given| given == key))
    .map(|(_, shown)| shown)
    .collect();
    let list = match missing.split_last() {
        None => return,
        Some((only, [])) => only.to_string(),
        Some((last, init)) => format!("{} and {last}", init.join(", ")),
    };
    match attrs.original {
        Some(original) => {
            cx.error_spanned_by(original, format!("missing {list} in `#[projection(...)]`"));
        }
        None => cx.error_spanned_by(
            input.ident,
            "`#[derive(Projection)]` needs `#[projection(event = Type, sink = Type, \
             apply(Variant, ...))]` on the struct",
        ),
    }
}

fn not_blank(cx: &mut Errors, name: &LitStr, what: &str) {
    if name.value().trim().is_empty() {
        cx.error_spanned_by(name, format!("{what} cannot be empty"));
    }
}

/// The derives name `Self` without parameters, so generic types are out.
fn no_generics(cx: &mut Errors, generics: &Generics, derive: &str) {
    let message = format!(
        "`#[derive({derive})]` does not support generic types; \
         implement `{derive}` by hand for a generic type"
    );
    if !generics.params.is_empty() {
        cx.error_spanned_by(generics, message);
    } else if let Some(where_clause) = &generics.where_clause {
        cx.error_spanned_by(where_clause.to_token_stream(), message);
    }
}
