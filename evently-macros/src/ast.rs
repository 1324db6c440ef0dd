//! The typed model of each derive's input: the enum or struct, its variants
//! and fields, with their attributes parsed. `from_syn` builds it and
//! reports shapes a derive cannot take at all (a union, an enum where a
//! struct is needed); `valid.rs` checks the rest and `expand.rs` reads it.

use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Generics, Ident, Index, Member, Path, Type};

use crate::attr::{self, AggregateAttrs, CommandPlace, EventAttrs, EventPlace, ProjectionAttrs};
use crate::ctxt::Errors;

/// How a variant (or struct) holds its fields, which decides its pattern.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// `V`
    Unit,
    /// `V(a, b)`
    Tuple,
    /// `V { a, b }`
    Struct,
}

impl Style {
    fn of(fields: &Fields) -> Style {
        match fields {
            Fields::Unit => Style::Unit,
            Fields::Unnamed(_) => Style::Tuple,
            Fields::Named(_) => Style::Struct,
        }
    }
}

/// An identifier as serde and users see it (`r#type` is `type`).
pub(crate) fn ident_string(ident: &Ident) -> String {
    ident.unraw().to_string()
}

/// The input of `#[derive(Event)]`.
pub(crate) struct EventInput<'a> {
    pub ident: &'a Ident,
    pub vis: &'a syn::Visibility,
    pub generics: &'a Generics,
    /// The `#[event(...)]` keys on the enum or struct itself.
    pub attrs: EventAttrs,
    /// The `#[serde(...)]` keys on the enum or struct itself.
    pub serde: Vec<Path>,
    pub shape: EventShape<'a>,
}

/// An event enum (one stored event type per variant) or struct (one type).
pub(crate) enum EventShape<'a> {
    Enum(Vec<EventVariant<'a>>),
    Struct,
}

/// One variant of an event enum.
pub(crate) struct EventVariant<'a> {
    pub ident: &'a Ident,
    pub style: Style,
    pub attrs: EventAttrs,
    /// The variant's `#[serde(...)]` keys.
    pub serde: Vec<Path>,
    /// Its fields in declaration order, as a pattern names them (`amount`
    /// or `0`), with their types.
    pub fields: Vec<(Member, &'a Type)>,
}

impl<'a> EventInput<'a> {
    /// The model of `input`, or `None` (with the error recorded) for a union.
    pub(crate) fn from_syn(cx: &mut Errors, input: &'a DeriveInput) -> Option<Self> {
        let place = match &input.data {
            Data::Enum(_) => EventPlace::Enum,
            Data::Struct(_) => EventPlace::Struct,
            Data::Union(data) => {
                cx.error_spanned_by(
                    data.union_token,
                    "`#[derive(Event)]` works on an enum or a struct, not on a union",
                );
                return None;
            }
        };
        // Read in source order, so errors come out in source order.
        let attrs = attr::event_attrs(cx, &input.attrs, place);
        let shape = match &input.data {
            Data::Enum(data) => {
                let variants = data
                    .variants
                    .iter()
                    .map(|variant| {
                        for field in &variant.fields {
                            attr::reject_on_field(cx, &field.attrs, "event", "a variant");
                        }
                        EventVariant {
                            ident: &variant.ident,
                            style: Style::of(&variant.fields),
                            attrs: attr::event_attrs(cx, &variant.attrs, EventPlace::Variant),
                            serde: attr::serde_keys(&variant.attrs),
                            fields: variant
                                .fields
                                .members()
                                .zip(variant.fields.iter().map(|field| &field.ty))
                                .collect(),
                        }
                    })
                    .collect();
                EventShape::Enum(variants)
            }
            Data::Struct(data) => {
                for field in &data.fields {
                    attr::reject_on_field(cx, &field.attrs, "event", "the struct");
                }
                EventShape::Struct
            }
            Data::Union(_) => return None,
        };
        Some(EventInput {
            ident: &input.ident,
            vis: &input.vis,
            generics: &input.generics,
            attrs,
            serde: attr::serde_keys(&input.attrs),
            shape,
        })
    }

    /// The schema version of the struct, or the one variants inherit.
    pub(crate) fn version(&self) -> u32 {
        self.attrs
            .version
            .as_ref()
            .map_or(1, |version| version.value)
    }

    /// The stored event type name of a struct event.
    pub(crate) fn event_type(&self) -> String {
        self.attrs
            .name
            .as_ref()
            .map_or_else(|| ident_string(self.ident), |name| name.value())
    }
}

impl EventVariant<'_> {
    /// The stored event type name of this variant.
    pub(crate) fn event_type(&self) -> String {
        self.attrs
            .name
            .as_ref()
            .map_or_else(|| ident_string(self.ident), |name| name.value())
    }

    /// The schema version of this variant, given the enum's.
    pub(crate) fn version(&self, inherited: u32) -> u32 {
        self.attrs
            .version
            .as_ref()
            .map_or(inherited, |version| version.value)
    }
}

/// The input of `#[derive(Command)]`.
pub(crate) struct CommandInput<'a> {
    pub ident: &'a Ident,
    pub generics: &'a Generics,
    pub shape: CommandShape<'a>,
}

/// A command enum (one command type per variant) or struct (one type).
pub(crate) enum CommandShape<'a> {
    Enum(Vec<CommandVariant<'a>>),
    Struct(CommandVariant<'a>),
}

/// One variant of a command enum, or a command struct's own body.
pub(crate) struct CommandVariant<'a> {
    /// The variant's name, or the struct's.
    pub ident: &'a Ident,
    pub style: Style,
    /// `#[command(name = "...")]`.
    pub name: Option<syn::LitStr>,
    pub fields: Vec<CommandField<'a>>,
}

/// One field of a command variant or struct.
pub(crate) struct CommandField<'a> {
    /// `account` or `0`, to read the field in a pattern.
    pub member: Member,
    pub ty: &'a Type,
    /// The `id` of `#[command(id)]`, if the field has it.
    pub id: Option<Path>,
    /// Whether the field's `#[command(...)]` has a wrong key.
    pub wrong_attr: bool,
}

impl<'a> CommandInput<'a> {
    /// The command bodies: the struct's, or each variant's.
    pub(crate) fn targets(&self) -> &[CommandVariant<'a>] {
        match &self.shape {
            CommandShape::Enum(variants) => variants,
            CommandShape::Struct(body) => std::slice::from_ref(body),
        }
    }

    /// Whether the command names its aggregate: some field is `id` or
    /// marked `#[command(id)]` (then every variant must have one). A
    /// command without any is run with `execute_on(id, command)`.
    pub(crate) fn routed(&self) -> bool {
        self.targets().iter().any(|target| {
            target.id_field().is_some() || target.fields.iter().any(|field| field.wrong_attr)
        })
    }

    /// The model of `input`, or `None` (with the error recorded) for a union.
    pub(crate) fn from_syn(cx: &mut Errors, input: &'a DeriveInput) -> Option<Self> {
        let shape = match &input.data {
            Data::Enum(data) => {
                attr::command_attrs(cx, &input.attrs, CommandPlace::Enum);
                let variants = data
                    .variants
                    .iter()
                    .map(|variant| {
                        CommandVariant::from_syn(
                            cx,
                            &variant.ident,
                            &variant.attrs,
                            &variant.fields,
                        )
                    })
                    .collect();
                CommandShape::Enum(variants)
            }
            Data::Struct(data) => CommandShape::Struct(CommandVariant::from_syn(
                cx,
                &input.ident,
                &input.attrs,
                &data.fields,
            )),
            Data::Union(data) => {
                cx.error_spanned_by(
                    data.union_token,
                    "`#[derive(Command)]` works on an enum or a struct, not on a union",
                );
                return None;
            }
        };
        Some(CommandInput {
            ident: &input.ident,
            generics: &input.generics,
            shape,
        })
    }
}

impl<'a> CommandVariant<'a> {
    fn from_syn(
        cx: &mut Errors,
        ident: &'a Ident,
        attrs: &[syn::Attribute],
        fields: &'a Fields,
    ) -> Self {
        let style = Style::of(fields);
        let fields = fields
            .iter()
            .enumerate()
            .map(|(index, field)| {
                let attrs = attr::command_attrs(cx, &field.attrs, CommandPlace::Field);
                CommandField {
                    member: match &field.ident {
                        Some(ident) => Member::Named(ident.clone()),
                        None => Member::Unnamed(Index {
                            index: index as u32,
                            span: field.ty.span(),
                        }),
                    },
                    ty: &field.ty,
                    id: attrs.id,
                    wrong_attr: attrs.wrong,
                }
            })
            .collect();
        CommandVariant {
            ident,
            style,
            name: attr::command_attrs(cx, attrs, CommandPlace::Variant).name,
            fields,
        }
    }

    /// The field that holds the aggregate id: the one marked
    /// `#[command(id)]`, else the one named `id`.
    pub(crate) fn id_field(&self) -> Option<&CommandField<'a>> {
        let marked = self.fields.iter().find(|field| field.id.is_some());
        marked.or_else(|| {
            self.fields.iter().find(
                |field| matches!(&field.member, Member::Named(name) if ident_string(name) == "id"),
            )
        })
    }

    /// The command type name: `#[command(name = "...")]`, else the ident.
    pub(crate) fn command_type(&self) -> String {
        self.name
            .as_ref()
            .map_or_else(|| ident_string(self.ident), |name| name.value())
    }
}

/// The input of `#[derive(Aggregate)]`.
pub(crate) struct AggregateInput<'a> {
    pub ident: &'a Ident,
    pub generics: &'a Generics,
    pub attrs: AggregateAttrs<'a>,
}

impl<'a> AggregateInput<'a> {
    /// The model of `input`, or `None` (with the error recorded) for an enum
    /// or a union.
    pub(crate) fn from_syn(cx: &mut Errors, input: &'a DeriveInput) -> Option<Self> {
        match &input.data {
            Data::Struct(data) => {
                for field in &data.fields {
                    attr::reject_on_field(cx, &field.attrs, "aggregate", "the struct");
                }
            }
            Data::Enum(data) => {
                cx.error_spanned_by(
                    data.enum_token,
                    "`#[derive(Aggregate)]` works on a struct only: the aggregate's state",
                );
                return None;
            }
            Data::Union(data) => {
                cx.error_spanned_by(
                    data.union_token,
                    "`#[derive(Aggregate)]` works on a struct only: the aggregate's state",
                );
                return None;
            }
        }
        Some(AggregateInput {
            ident: &input.ident,
            generics: &input.generics,
            attrs: attr::aggregate_attrs(cx, &input.attrs),
        })
    }

    /// The aggregate type name: `name = "..."`, else the struct's name in
    /// snake case.
    pub(crate) fn type_name(&self) -> String {
        self.attrs.name.as_ref().map_or_else(
            || snake_case(&ident_string(self.ident)),
            |name| name.value(),
        )
    }
}

/// The input of `#[derive(Projection)]`.
pub(crate) struct ProjectionInput<'a> {
    pub ident: &'a Ident,
    pub generics: &'a Generics,
    pub attrs: ProjectionAttrs<'a>,
}

/// One handled variant with the method that handles it.
pub(crate) struct Handler {
    /// The variant of the event enum, as written.
    pub variant: Ident,
    /// The method: as written after `=`, else the variant in snake case
    /// (spanned at the variant, so a missing method is reported there).
    pub method: Ident,
}

impl<'a> ProjectionInput<'a> {
    /// The model of `input`, or `None` (with the error recorded) for an
    /// enum or a union.
    pub(crate) fn from_syn(cx: &mut Errors, input: &'a DeriveInput) -> Option<Self> {
        let message = "`#[derive(Projection)]` works on a struct only: \
                       the projection, whose methods are its handlers";
        match &input.data {
            Data::Struct(data) => {
                for field in &data.fields {
                    attr::reject_on_field(cx, &field.attrs, "projection", "the struct");
                }
            }
            Data::Enum(data) => {
                cx.error_spanned_by(data.enum_token, message);
                return None;
            }
            Data::Union(data) => {
                cx.error_spanned_by(data.union_token, message);
                return None;
            }
        }
        Some(ProjectionInput {
            ident: &input.ident,
            generics: &input.generics,
            attrs: attr::projection_attrs(cx, &input.attrs),
        })
    }

    /// The projection's name: `name = "..."`, else the struct's name in
    /// snake case.
    pub(crate) fn name(&self) -> String {
        self.attrs.name.as_ref().map_or_else(
            || snake_case(&ident_string(self.ident)),
            |name| name.value(),
        )
    }

    /// The handled variants in the order listed, each with its method.
    /// `Err` with the variant whose default method name is not a valid one.
    pub(crate) fn handlers(&self) -> Vec<Result<Handler, &Ident>> {
        let Some(list) = &self.attrs.apply else {
            return Vec::new();
        };
        list.entries
            .iter()
            .map(|entry| {
                let method = match &entry.method {
                    Some(method) => method.clone(),
                    None => method_for(&entry.variant).ok_or(&entry.variant)?,
                };
                Ok(Handler {
                    variant: entry.variant.clone(),
                    method,
                })
            })
            .collect()
    }
}

/// The method named after a variant: its name in snake case, raw if that
/// is a keyword (`Move` -> `r#move`), or `None` if it cannot be a method
/// name at all (`Crate` -> `crate`).
pub(crate) fn method_for(variant: &Ident) -> Option<Ident> {
    let name = snake_case(&ident_string(variant));
    let span = variant.span();
    if syn::parse_str::<Ident>(&name).is_ok() {
        return Some(Ident::new(&name, span));
    }
    match name.as_str() {
        "self" | "super" | "crate" | "_" => None,
        _ => syn::parse_str::<Ident>(&format!("r#{name}"))
            .ok()
            .map(|_| Ident::new_raw(&name, span)),
    }
}

/// `BankAccount` -> `bank_account`, `HTTPGateway` -> `http_gateway`.
pub(crate) fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev = i.checked_sub(1).map(|j| chars[j]);
            let next = chars.get(i + 1);
            let starts_word = match prev {
                None | Some('_') => false,
                Some(p) if p.is_lowercase() || p.is_ascii_digit() => true,
                // The last capital of an acronym starts the next word: HTTPGateway.
                Some(p) if p.is_uppercase() => next.is_some_and(|n| n.is_lowercase()),
                Some(_) => false,
            };
            if starts_word {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{method_for, snake_case};
    use proc_macro2::Span;
    use syn::Ident;

    #[test]
    fn a_variant_names_its_method_in_snake_case_raw_if_a_keyword() {
        let method = |variant: &str| {
            method_for(&Ident::new(variant, Span::call_site())).map(|m| m.to_string())
        };
        assert_eq!(method("Opened").as_deref(), Some("opened"));
        assert_eq!(method("MoneyDeposited").as_deref(), Some("money_deposited"));
        assert_eq!(method("Move").as_deref(), Some("r#move"));
        assert_eq!(method("Type").as_deref(), Some("r#type"));
        assert_eq!(method("Crate"), None);
        assert_eq!(method("Super"), None);
    }

    #[test]
    fn snake_case_splits_words_and_acronyms() {
        assert_eq!(snake_case("BankAccount"), "bank_account");
        assert_eq!(snake_case("Counter"), "counter");
        assert_eq!(snake_case("HTTPGateway"), "http_gateway");
        assert_eq!(snake_case("OrderV2Line"), "order_v2_line");
        assert_eq!(snake_case("Already_Snake"), "already_snake");
        assert_eq!(snake_case("ABC"), "abc");
    }
}
