//! Tables laid out exactly as python-troveclient prints them with prettytable.
//!
//! Two entry points mirror `troveclient/utils.py`:
//! - [`print_list`] (`utils.print_list`): one row per object, labels made from the field names,
//!   a column right-aligned when the *first* object's value is a number or a boolean, and rows
//!   sorted by the text of the order column with ties broken by the whole row.
//! - [`print_dict`] (`utils.print_dict`): `Property` / `Value`, both left-aligned, sorted by
//!   property name.
//!
//! Layout (prettytable's default style): one space of padding on each side of every cell, `+`
//! joints, `-` rules and `|` separators, a rule above the header, below it and at the bottom. A
//! cell holding several lines makes its row that many lines tall; every line is justified on its
//! own. A table without rows is the header block followed straight away by the bottom rule.
//! Every rendered table ends with a newline, as Python's `print()` adds one.

use crate::json::{Json, Object};

/// How a column's cells (and its header) are justified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Text first, padding after.
    Left,
    /// Padding first, text after.
    Right,
}

/// A plain table of strings: headers with an alignment each, and rows of cells.
#[derive(Clone, Debug)]
pub struct Table {
    headers: Vec<String>,
    aligns: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these headers and no rows.
    pub fn new<I, S>(columns: I) -> Self
    where
        I: IntoIterator<Item = (S, Align)>,
        S: Into<String>,
    {
        let (headers, aligns) = columns.into_iter().map(|(h, a)| (h.into(), a)).unzip();
        Self {
            headers,
            aligns,
            rows: Vec::new(),
        }
    }

    /// Appends a row. Missing trailing cells are treated as empty; extra cells are ignored.
    pub fn add_row(&mut self, mut row: Vec<String>) {
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    /// Sorts the rows as prettytable's `sortby` does: by the text of `column`, then by the whole
    /// row from the first cell to the last (Python compares the decorated lists). The sort is
    /// stable and compares strings by code point.
    pub fn sort_by(&mut self, column: usize) {
        if column >= self.headers.len() {
            return;
        }
        self.rows
            .sort_by(|a, b| a[column].cmp(&b[column]).then_with(|| a.cmp(b)));
    }

    /// The rendered table, ending with a newline.
    pub fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|row| block_width(&row[i]))
                    .chain(std::iter::once(block_width(&self.headers[i])))
                    .max()
                    .unwrap_or(0)
            })
            .collect();

        let rule = {
            let mut rule = String::from("+");
            for w in &widths {
                rule.push_str(&"-".repeat(w + 2));
                rule.push('+');
            }
            rule
        };

        let mut out = String::new();
        out.push_str(&rule);
        out.push('\n');
        self.render_row(&mut out, &self.headers, &widths);
        out.push_str(&rule);
        out.push('\n');
        for row in &self.rows {
            self.render_row(&mut out, row, &widths);
        }
        out.push_str(&rule);
        out.push('\n');
        out
    }

    fn render_row(&self, out: &mut String, cells: &[String], widths: &[usize]) {
        let lines: Vec<Vec<&str>> = cells.iter().map(|c| c.split('\n').collect()).collect();
        let height = lines.iter().map(Vec::len).max().unwrap_or(1);
        for y in 0..height {
            out.push('|');
            for (i, cell_lines) in lines.iter().enumerate() {
                let text = cell_lines.get(y).copied().unwrap_or("");
                out.push(' ');
                out.push_str(&justify(text, widths[i], self.aligns[i]));
                out.push_str(" |");
            }
            out.push('\n');
        }
    }
}

/// Pads `text` to `width` display columns on the side `align` calls for.
fn justify(text: &str, width: usize, align: Align) -> String {
    let pad = " ".repeat(width.saturating_sub(display_width(text)));
    match align {
        Align::Left => format!("{text}{pad}"),
        Align::Right => format!("{pad}{text}"),
    }
}

/// The width of the widest line of a (possibly multi-line) cell.
fn block_width(text: &str) -> usize {
    text.split('\n').map(display_width).max().unwrap_or(0)
}

/// How many terminal columns `text` takes, as prettytable measures it with `wcwidth`: East Asian
/// wide and full-width characters count 2, combining marks, zero-width and control characters 0,
/// everything else 1.
pub fn display_width(text: &str) -> usize {
    text.chars().map(char_width).sum()
}

fn char_width(c: char) -> usize {
    let code = u32::from(c);
    match code {
        0x00..=0x1f | 0x7f..=0x9f => 0,
        0x300..=0x36f
        | 0x483..=0x489
        | 0x591..=0x5bd
        | 0x610..=0x61a
        | 0x64b..=0x65f
        | 0x1ab0..=0x1aff
        | 0x1dc0..=0x1dff
        | 0x200b..=0x200f
        | 0x20d0..=0x20ff
        | 0xfe00..=0xfe0f
        | 0xfe20..=0xfe2f
        | 0xfeff => 0,
        0x1100..=0x115f
        | 0x2e80..=0x303e
        | 0x3041..=0x33ff
        | 0x3400..=0x4dbf
        | 0x4e00..=0x9fff
        | 0xa000..=0xa4cf
        | 0xac00..=0xd7a3
        | 0xf900..=0xfaff
        | 0xfe30..=0xfe4f
        | 0xff00..=0xff60
        | 0xffe0..=0xffe6
        | 0x1f300..=0x1f64f
        | 0x1f900..=0x1f9ff
        | 0x20000..=0x3fffd => 2,
        _ => 1,
    }
}

/// Which column a list table is sorted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order<'a> {
    /// The first column (`print_list`'s default).
    First,
    /// The column of this field name (`order_by=`).
    By(&'a str),
    /// Keep the rows in the order they were given (our own commands only).
    AsReceived,
}

/// The header `print_list` makes from a field name: underscores become spaces and ` id` becomes
/// ` ID`; a label shorter than 3 characters is upper-cased, otherwise every word gets an initial
/// capital.
pub fn list_label(field: &str) -> String {
    let label = field.replace('_', " ").replace(" id", " ID");
    if label.chars().count() < 3 {
        return label.to_uppercase();
    }
    label
        .split_whitespace()
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect(),
                None => String::new(),
            }
        })
        .collect::<Vec<String>>()
        .join(" ")
}

/// The text of one list cell: a missing field is empty, strings are as they are, anything else is
/// Python's `str()` (`True`, `None`, `['a']`...).
pub fn cell_text(value: Option<&Json>) -> String {
    value.map(Json::py_str).unwrap_or_default()
}

/// Renders `objs` as `utils.print_list` does.
///
/// `fields` are looked up in each object; `labels` override the generated header of a field. A
/// column is right-aligned when its value in the first object is a number or a boolean.
pub fn print_list(
    objs: &[Json],
    fields: &[&str],
    labels: &[(&str, &str)],
    order: Order<'_>,
) -> String {
    let label_of = |field: &str| {
        labels
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, l)| (*l).to_owned())
            .unwrap_or_else(|| list_label(field))
    };
    let first = objs.first();
    let columns = fields.iter().map(|field| {
        let align = match first.and_then(|o| o.get(field)) {
            Some(Json::Number(_) | Json::Bool(_)) => Align::Right,
            _ => Align::Left,
        };
        (label_of(field), align)
    });
    let mut table = Table::new(columns);
    for obj in objs {
        table.add_row(fields.iter().map(|f| cell_text(obj.get(f))).collect());
    }
    match order {
        Order::First => table.sort_by(0),
        Order::By(field) => {
            if let Some(index) = fields.iter().position(|f| *f == field) {
                table.sort_by(index);
            }
        }
        Order::AsReceived => {}
    }
    table.render()
}

/// Renders `d` as `utils.print_dict` does: `Property` / `Value`, left-aligned, sorted by
/// property, each value as Python's `str()`.
pub fn print_dict(d: &Object) -> String {
    let mut table = Table::new([("Property", Align::Left), ("Value", Align::Left)]);
    for (key, value) in d.iter() {
        table.add_row(vec![key.to_owned(), value.py_str()]);
    }
    table.sort_by(0);
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Json {
        Json::parse(text).expect("test JSON is valid")
    }

    #[test]
    fn labels_follow_troveclient() {
        assert_eq!(list_label("id"), "ID");
        assert_eq!(list_label("flavor_id"), "Flavor ID");
        assert_eq!(list_label("md5"), "Md5");
        assert_eq!(list_label("datastore_version"), "Datastore Version");
        assert_eq!(list_label("min_updated_date"), "Min Updated Date");
        assert_eq!(list_label("ip"), "IP");
    }

    #[test]
    fn spec_example_layout() {
        let rows = parse(r#"[{"name": "mymod", "type": "ping"}]"#);
        let out = print_list(
            rows.as_array().expect("array"),
            &["name", "type"],
            &[],
            Order::First,
        );
        assert_eq!(
            out,
            "+-------+------+\n\
             | Name  | Type |\n\
             +-------+------+\n\
             | mymod | ping |\n\
             +-------+------+\n"
        );
    }

    #[test]
    fn empty_table_is_header_then_bottom_rule() {
        let out = print_list(&[], &["id", "name"], &[], Order::First);
        assert_eq!(
            out,
            "+----+------+\n\
             | ID | Name |\n\
             +----+------+\n\
             +----+------+\n"
        );
    }

    #[test]
    fn alignment_comes_from_the_first_object_only() {
        // The first object has a string size, the second a number: the column stays left.
        let rows = parse(r#"[{"a": "-", "b": 1}, {"a": 22, "b": "x"}]"#);
        let out = print_list(
            rows.as_array().expect("array"),
            &["a", "b"],
            &[],
            Order::AsReceived,
        );
        assert_eq!(
            out,
            "+----+---+\n\
             | A  | B |\n\
             +----+---+\n\
             | -  | 1 |\n\
             | 22 | x |\n\
             +----+---+\n"
        );
    }

    #[test]
    fn right_aligned_header_follows_its_column() {
        let rows = parse(r#"[{"instance_count": 12345678}]"#);
        let out = print_list(
            rows.as_array().expect("array"),
            &["instance_count"],
            &[("instance_count", "Count")],
            Order::First,
        );
        assert_eq!(
            out,
            "+----------+\n\
             |    Count |\n\
             +----------+\n\
             | 12345678 |\n\
             +----------+\n"
        );
    }

    #[test]
    fn sorting_is_textual_with_row_tie_break() {
        let rows = parse(
            r#"[{"ram": 512, "name": "b"}, {"ram": 1024, "name": "z"},
                {"ram": 512, "name": "a"}]"#,
        );
        let out = print_list(
            rows.as_array().expect("array"),
            &["name", "ram"],
            &[("ram", "RAM")],
            Order::By("ram"),
        );
        let names: Vec<&str> = out
            .lines()
            .skip(3)
            .filter(|l| l.starts_with('|'))
            .map(|l| l.split('|').nth(1).unwrap_or("").trim())
            .collect();
        assert_eq!(names, ["z", "a", "b"]);
    }

    #[test]
    fn missing_null_and_bool_cells() {
        let rows = parse(r#"[{"a": null, "b": false}]"#);
        let out = print_list(
            rows.as_array().expect("array"),
            &["a", "b", "c"],
            &[],
            Order::First,
        );
        assert!(out.contains("| None | False |   |"), "{out}");
    }

    #[test]
    fn dict_values_spread_over_lines() {
        let d: Object = [
            ("versions (id)", Json::from("5.6 (a1)\n5.7 (b22)")),
            ("name", Json::from("mysql")),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            print_dict(&d),
            "+---------------+-----------+\n\
             | Property      | Value     |\n\
             +---------------+-----------+\n\
             | name          | mysql     |\n\
             | versions (id) | 5.6 (a1)  |\n\
             |               | 5.7 (b22) |\n\
             +---------------+-----------+\n"
        );
    }

    #[test]
    fn wide_characters_take_two_columns() {
        assert_eq!(display_width("数据"), 4);
        assert_eq!(display_width("e\u{301}"), 1);
        let d: Object = [("name", Json::from("数据"))].into_iter().collect();
        assert!(print_dict(&d).contains("| name     | 数据  |"));
    }
}
