//! The invoice and the receipt as PDF, drawn with the standard Helvetica fonts (nothing embedded,
//! so the files stay small). Nothing in the file depends on when or where it was made: no creation
//! date, no random document id, so a resend attaches identical bytes.

use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str, TextStr};
use settled_jobs::money::Money;

use super::view::View;

const PAGE_W: f32 = 595.0;
const PAGE_H: f32 = 842.0;
const LEFT: f32 = 50.0;
const RIGHT: f32 = PAGE_W - 50.0;
const BOTTOM: f32 = 90.0;

/// Advance widths (1/1000 em) of Helvetica and Helvetica-Bold for ASCII 32..=126, from the
/// fonts' AFM metrics; other characters are measured as a digit.
const HELVETICA: [u16; 95] = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556, 556,
    556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556, 1015, 667, 667, 722, 722, 667,
    611, 778, 722, 278, 500, 667, 556, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667,
    667, 611, 278, 278, 278, 469, 556, 333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500,
    222, 833, 556, 556, 556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,
];
const HELVETICA_BOLD: [u16; 95] = [
    278, 333, 474, 556, 556, 889, 722, 238, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556, 556,
    556, 556, 556, 556, 556, 556, 556, 333, 333, 584, 584, 584, 611, 975, 722, 722, 722, 722, 667,
    611, 778, 722, 278, 556, 722, 611, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667,
    667, 611, 333, 278, 333, 584, 556, 333, 556, 611, 556, 611, 556, 333, 611, 611, 278, 278, 556,
    278, 889, 611, 611, 611, 611, 389, 556, 333, 611, 556, 778, 556, 556, 500, 389, 280, 389, 584,
];

/// The WinAnsi byte of a character, if the standard fonts can show it.
fn win_ansi(c: char) -> Option<u8> {
    let code = c as u32;
    if (0x20..0x7f).contains(&code) || (0xa0..=0xff).contains(&code) {
        return Some(code as u8);
    }
    Some(match c {
        '€' => 0x80,
        '‚' => 0x82,
        'ƒ' => 0x83,
        '„' => 0x84,
        '…' => 0x85,
        '†' => 0x86,
        '‡' => 0x87,
        'ˆ' => 0x88,
        '‰' => 0x89,
        'Š' => 0x8a,
        '‹' => 0x8b,
        'Œ' => 0x8c,
        'Ž' => 0x8e,
        '‘' => 0x91,
        '’' => 0x92,
        '“' => 0x93,
        '”' => 0x94,
        '•' => 0x95,
        '–' => 0x96,
        '—' => 0x97,
        '˜' => 0x98,
        '™' => 0x99,
        'š' => 0x9a,
        '›' => 0x9b,
        'œ' => 0x9c,
        'ž' => 0x9e,
        'Ÿ' => 0x9f,
        '\u{202f}' | '\u{2009}' => b' ',
        _ => return None,
    })
}

fn encode(text: &str) -> Vec<u8> {
    text.chars().map(|c| win_ansi(c).unwrap_or(b'?')).collect()
}

/// Amounts as the PDF shows them: with the currency's symbol when the standard fonts have it
/// ("€19.99", "¥1,000"), else with the code ("1,000.00 INR").
pub fn money_for_pdf(m: Money) -> String {
    if m.currency.symbol().chars().all(|c| win_ansi(c).is_some()) {
        m.display()
    } else {
        m.display_with_code()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Font {
    Regular,
    Bold,
}

impl Font {
    fn name(self) -> Name<'static> {
        match self {
            Font::Regular => Name(b"F1"),
            Font::Bold => Name(b"F2"),
        }
    }
}

fn width(text: &str, font: Font, size: f32) -> f32 {
    let table = match font {
        Font::Regular => &HELVETICA,
        Font::Bold => &HELVETICA_BOLD,
    };
    let units: u32 = text
        .chars()
        .map(|c| {
            let code = c as u32;
            if (32..=126).contains(&code) {
                u32::from(table[(code - 32) as usize])
            } else {
                556
            }
        })
        .sum();
    units as f32 * size / 1000.0
}

/// Splits text into lines no wider than `max`, breaking at spaces (a longer word is cut).
fn wrap(text: &str, font: Font, size: f32, max: f32) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        let candidate = if current.is_empty() {
            word.to_string()
        } else {
            format!("{current} {word}")
        };
        if width(&candidate, font, size) <= max {
            current = candidate;
            continue;
        }
        if !current.is_empty() {
            lines.push(std::mem::take(&mut current));
        }
        let mut piece = String::new();
        for c in word.chars() {
            piece.push(c);
            if width(&piece, font, size) > max {
                piece.pop();
                lines.push(std::mem::take(&mut piece));
                piece.push(c);
            }
        }
        current = piece;
    }
    if !current.is_empty() || lines.is_empty() {
        lines.push(current);
    }
    lines
}

/// Pages being drawn: a cursor moving down, a new page when it reaches the bottom.
struct Doc {
    pages: Vec<Content>,
    y: f32,
    footer: String,
}

const GRAY: f32 = 0.42;

impl Doc {
    fn new(footer: String) -> Doc {
        Doc {
            pages: vec![Content::new()],
            y: PAGE_H - 60.0,
            footer,
        }
    }

    fn page(&mut self) -> &mut Content {
        let last = self.pages.len() - 1;
        &mut self.pages[last]
    }

    fn text(&mut self, x: f32, y: f32, text: &str, font: Font, size: f32, gray: f32) {
        let bytes = encode(text);
        let page = self.page();
        page.set_fill_gray(gray);
        page.begin_text();
        page.set_font(font.name(), size);
        page.next_line(x, y);
        page.show(Str(&bytes));
        page.end_text();
    }

    fn text_right(&mut self, right: f32, y: f32, text: &str, font: Font, size: f32, gray: f32) {
        let x = right - width(text, font, size);
        self.text(x, y, text, font, size, gray);
    }

    fn rule(&mut self, y: f32, gray: f32, line_width: f32) {
        let page = self.page();
        page.set_stroke_gray(gray);
        page.set_line_width(line_width);
        page.move_to(LEFT, y);
        page.line_to(RIGHT, y);
        page.stroke();
    }

    /// Makes room for `height` points, starting a new page when this one is full.
    fn need(&mut self, height: f32) {
        if self.y - height < BOTTOM {
            self.pages.push(Content::new());
            self.y = PAGE_H - 60.0;
        }
    }

    fn finish(mut self, title: &str) -> Vec<u8> {
        let count = self.pages.len();
        let footer = std::mem::take(&mut self.footer);
        for i in 0..count {
            let last = i;
            let label = format!("Page {} of {count}", i + 1);
            let bytes_footer = encode(&footer);
            let bytes_label = encode(&label);
            let label_x = RIGHT - width(&label, Font::Regular, 8.0);
            let page = &mut self.pages[last];
            page.set_stroke_gray(0.85);
            page.set_line_width(0.5);
            page.move_to(LEFT, 60.0);
            page.line_to(RIGHT, 60.0);
            page.stroke();
            page.set_fill_gray(GRAY);
            page.begin_text();
            page.set_font(Font::Regular.name(), 8.0);
            page.next_line(LEFT, 46.0);
            page.show(Str(&bytes_footer));
            page.end_text();
            page.begin_text();
            page.set_font(Font::Regular.name(), 8.0);
            page.next_line(label_x, 46.0);
            page.show(Str(&bytes_label));
            page.end_text();
        }
        let mut pdf = Pdf::new();
        let catalog = Ref::new(1);
        let tree = Ref::new(2);
        let regular = Ref::new(3);
        let bold = Ref::new(4);
        let info = Ref::new(5);
        let page_ids: Vec<Ref> = (0..count).map(|i| Ref::new(6 + 2 * i as i32)).collect();
        pdf.catalog(catalog).pages(tree);
        pdf.pages(tree)
            .kids(page_ids.iter().copied())
            .count(count as i32);
        for (i, content) in self.pages.into_iter().enumerate() {
            let page_id = page_ids[i];
            let content_id = Ref::new(page_id.get() + 1);
            let mut page = pdf.page(page_id);
            page.media_box(Rect::new(0.0, 0.0, PAGE_W, PAGE_H));
            page.parent(tree);
            page.contents(content_id);
            page.resources()
                .fonts()
                .pair(Font::Regular.name(), regular)
                .pair(Font::Bold.name(), bold);
            page.finish();
            let data = content.finish();
            pdf.stream(content_id, data.as_slice());
        }
        pdf.type1_font(regular)
            .base_font(Name(b"Helvetica"))
            .encoding_predefined(Name(b"WinAnsiEncoding"));
        pdf.type1_font(bold)
            .base_font(Name(b"Helvetica-Bold"))
            .encoding_predefined(Name(b"WinAnsiEncoding"));
        pdf.document_info(info)
            .title(TextStr(title))
            .producer(TextStr("settled"));
        pdf.finish()
    }
}

/// The letterhead (business on the left, the document's title and facts on the right) and the
/// customer it is addressed to.
fn head(doc: &mut Doc, view: &View, title: &str, facts: &[(&str, String)]) {
    let top = doc.y;
    doc.text(LEFT, top, &view.business.name, Font::Bold, 16.0, 0.0);
    let mut y = top - 16.0;
    for line in &view.business.address_lines {
        doc.text(LEFT, y, line, Font::Regular, 9.0, GRAY);
        y -= 12.0;
    }
    if !view.business.support_email.is_empty() {
        doc.text(
            LEFT,
            y,
            &view.business.support_email,
            Font::Regular,
            9.0,
            GRAY,
        );
        y -= 12.0;
    }
    doc.text_right(RIGHT, top, title, Font::Bold, 20.0, 0.0);
    let mut ry = top - 22.0;
    for (label, value) in facts {
        doc.text_right(RIGHT - 120.0, ry, label, Font::Regular, 9.0, GRAY);
        doc.text_right(RIGHT, ry, value, Font::Regular, 9.0, 0.0);
        ry -= 13.0;
    }
    y = y.min(ry) - 24.0;
    doc.text(LEFT, y, "BILLED TO", Font::Bold, 8.0, GRAY);
    doc.text(LEFT, y - 14.0, &view.customer.name, Font::Bold, 11.0, 0.0);
    doc.text(
        LEFT,
        y - 28.0,
        &view.customer.email,
        Font::Regular,
        9.0,
        GRAY,
    );
    doc.y = y - 56.0;
}

/// One row of a table: short cells on the left, one text wrapped over as many lines as it needs,
/// right-aligned cells, and a rule under it; on a new page the table's `header` comes first.
fn table_row(
    doc: &mut Doc,
    header: &dyn Fn(&mut Doc),
    left: &[(f32, &str)],
    (x, wrapped, font): (f32, &[String], Font),
    right: &[(f32, &str, Font)],
) {
    let height = 14.0 * wrapped.len() as f32 + 8.0;
    let before = doc.pages.len();
    doc.need(height);
    if doc.pages.len() != before {
        header(doc);
    }
    let y = doc.y;
    for (cx, text) in left {
        doc.text(*cx, y, text, Font::Regular, 10.0, 0.0);
    }
    for (i, part) in wrapped.iter().enumerate() {
        doc.text(x, y - 14.0 * i as f32, part, font, 10.0, 0.0);
    }
    for (cx, text, f) in right {
        doc.text_right(*cx, y, text, *f, 10.0, 0.0);
    }
    doc.rule(y - 14.0 * (wrapped.len() as f32 - 1.0) - 7.0, 0.92, 0.5);
    doc.y -= height;
}

/// A right-aligned label and amount, as in a totals block.
fn total_row(doc: &mut Doc, label: &str, value: &str, strong: bool) {
    doc.need(18.0);
    let font = if strong { Font::Bold } else { Font::Regular };
    let size = if strong { 11.0 } else { 10.0 };
    let y = doc.y;
    doc.text_right(
        RIGHT - 110.0,
        y,
        label,
        font,
        size,
        if strong { 0.0 } else { GRAY },
    );
    doc.text_right(RIGHT, y, value, font, size, 0.0);
    doc.y -= if strong { 20.0 } else { 16.0 };
}

fn footer(view: &View) -> String {
    let mut parts = vec![view.business.name.clone()];
    if !view.business.address.is_empty() {
        parts.push(view.business.address.clone());
    }
    if !view.business.support_email.is_empty() {
        parts.push(view.business.support_email.clone());
    }
    parts.join(" · ")
}

/// The invoice: header, lines, totals, what is due.
pub fn invoice(view: &View) -> Vec<u8> {
    let mut doc = Doc::new(footer(view));
    let Some(inv) = &view.invoice else {
        return doc.finish("Invoice");
    };
    let mut facts = vec![
        ("Invoice number", inv.number.clone()),
        ("Issued", inv.issue_date.clone()),
    ];
    if let Some(due) = &inv.due_date {
        facts.push(("Due", due.clone()));
    }
    if let Some(period) = &inv.period {
        facts.push(("Period", period.clone()));
    }
    head(&mut doc, view, "INVOICE", &facts);

    let col_qty = RIGHT - 190.0;
    let col_unit = RIGHT - 95.0;
    let header = |doc: &mut Doc| {
        let y = doc.y;
        doc.text(LEFT, y, "DESCRIPTION", Font::Bold, 8.0, GRAY);
        doc.text_right(col_qty, y, "QTY", Font::Bold, 8.0, GRAY);
        doc.text_right(col_unit, y, "UNIT PRICE", Font::Bold, 8.0, GRAY);
        doc.text_right(RIGHT, y, "AMOUNT", Font::Bold, 8.0, GRAY);
        doc.rule(y - 6.0, 0.8, 0.75);
        doc.y -= 22.0;
    };
    header(&mut doc);
    for line in &inv.lines {
        let mut description = line.description.clone();
        if let Some(rate) = &line.tax_rate {
            description.push_str(&format!(" (tax {rate})"));
        }
        let wrapped = wrap(&description, Font::Regular, 10.0, col_qty - LEFT - 60.0);
        table_row(
            &mut doc,
            &header,
            &[],
            (LEFT, &wrapped, Font::Regular),
            &[
                (col_qty, &line.quantity, Font::Regular),
                (col_unit, &line.unit_amount, Font::Regular),
                (RIGHT, &line.amount, Font::Regular),
            ],
        );
    }
    doc.y -= 6.0;
    if inv.has_tax {
        total_row(&mut doc, "Subtotal", &inv.subtotal, false);
        total_row(&mut doc, "Tax", &inv.tax, false);
    }
    total_row(&mut doc, "Total", &inv.total, true);
    if let Some(c) = &inv.credits_applied {
        total_row(&mut doc, "Credit applied", &format!("-{c}"), false);
    }
    if let Some(r) = &inv.retainer_applied {
        total_row(&mut doc, "Retainer used", &format!("-{r}"), false);
    }
    if let Some(p) = &inv.amount_paid {
        total_row(&mut doc, "Paid", &format!("-{p}"), false);
    }
    total_row(&mut doc, "Amount due", &inv.amount_due, true);
    doc.y -= 10.0;
    doc.need(20.0);
    let note = if inv.paid {
        "Paid in full. Thank you!".to_string()
    } else {
        match &inv.due_date {
            Some(d) => format!("Please pay {} by {d}.", inv.amount_due),
            None => format!("Please pay {}.", inv.amount_due),
        }
    };
    let y = doc.y;
    doc.text(LEFT, y, &note, Font::Regular, 10.0, 0.0);
    let instructions = &view.business.payment_instructions;
    if !inv.paid && !instructions.is_empty() {
        doc.y -= 24.0;
        doc.need(16.0 + 14.0 * instructions.len() as f32);
        let y = doc.y;
        doc.text(LEFT, y, "TO PAY BY BANK TRANSFER", Font::Bold, 8.0, GRAY);
        doc.y -= 16.0;
        for line in instructions {
            for part in wrap(line, Font::Regular, 10.0, RIGHT - LEFT) {
                doc.need(14.0);
                let y = doc.y;
                doc.text(LEFT, y, &part, Font::Regular, 10.0, 0.0);
                doc.y -= 14.0;
            }
        }
    }
    doc.finish(&format!("Invoice {}", inv.number))
}

/// The receipt of one payment: what was paid, how, for what, and what is left.
pub fn receipt(view: &View) -> Vec<u8> {
    let mut doc = Doc::new(footer(view));
    let Some(payment) = &view.payment else {
        return doc.finish("Receipt");
    };
    let mut facts = vec![
        ("Receipt number", payment.id.clone()),
        ("Date paid", payment.date.clone()),
    ];
    if let Some(inv) = &view.invoice {
        facts.push(("Invoice", inv.number.clone()));
    }
    head(&mut doc, view, "RECEIPT", &facts);

    let y = doc.y;
    doc.text(LEFT, y, "AMOUNT PAID", Font::Bold, 8.0, GRAY);
    doc.text(LEFT, y - 26.0, &payment.amount, Font::Bold, 24.0, 0.0);
    doc.y = y - 56.0;
    let mut rows: Vec<(String, String)> = vec![("Paid with".into(), payment.method.clone())];
    if let Some(r) = &payment.reference {
        rows.push(("Reference".into(), r.clone()));
    }
    for a in &view.allocations {
        rows.push((format!("Applied to {}", a.number), a.amount.clone()));
    }
    for (label, value) in rows {
        doc.need(20.0);
        let y = doc.y;
        doc.text(LEFT, y, &label, Font::Regular, 10.0, GRAY);
        doc.text_right(RIGHT, y, &value, Font::Regular, 10.0, 0.0);
        doc.rule(y - 7.0, 0.92, 0.5);
        doc.y -= 20.0;
    }
    if let Some(remaining) = &view.remaining {
        doc.y -= 4.0;
        doc.need(20.0);
        let y = doc.y;
        doc.text(LEFT, y, "Still to pay", Font::Bold, 11.0, 0.0);
        doc.text_right(RIGHT, y, remaining, Font::Bold, 11.0, 0.0);
        doc.y -= 24.0;
    }
    if view.settled {
        doc.need(20.0);
        let y = doc.y;
        doc.text(
            LEFT,
            y,
            "Nothing is left to pay. Thank you!",
            Font::Regular,
            10.0,
            0.0,
        );
    }
    doc.finish(&format!("Receipt {}", payment.id))
}

/// A statement of account: the opening balance, every movement with the running balance, and
/// the closing balance, for the period the view's statement covers.
pub fn statement(view: &View) -> Vec<u8> {
    let mut doc = Doc::new(footer(view));
    let Some(st) = &view.statement else {
        return doc.finish("Statement");
    };
    let facts = vec![
        ("Period", st.period.clone()),
        ("Currency", st.currency.clone()),
    ];
    head(&mut doc, view, "STATEMENT", &facts);
    let col_date = LEFT;
    let col_what = LEFT + 80.0;
    let col_amount = RIGHT - 95.0;
    let header = |doc: &mut Doc| {
        let y = doc.y;
        doc.text(col_date, y, "DATE", Font::Bold, 8.0, GRAY);
        doc.text(col_what, y, "DESCRIPTION", Font::Bold, 8.0, GRAY);
        doc.text_right(col_amount, y, "AMOUNT", Font::Bold, 8.0, GRAY);
        doc.text_right(RIGHT, y, "BALANCE", Font::Bold, 8.0, GRAY);
        doc.rule(y - 6.0, 0.8, 0.75);
        doc.y -= 22.0;
    };
    header(&mut doc);
    let row = |doc: &mut Doc, date: &str, what: &str, amount: &str, balance: &str, bold: bool| {
        let font = if bold { Font::Bold } else { Font::Regular };
        let wrapped = wrap(what, font, 10.0, col_amount - col_what - 80.0);
        table_row(
            doc,
            &header,
            &[(col_date, date)],
            (col_what, &wrapped, font),
            &[(col_amount, amount, Font::Regular), (RIGHT, balance, font)],
        );
    };
    row(
        &mut doc,
        &st.first_day,
        "Opening balance",
        "",
        &st.opening,
        true,
    );
    for line in &st.lines {
        let what = if line.reference.is_empty() {
            line.kind.clone()
        } else {
            format!("{} {}", line.kind, line.reference)
        };
        row(
            &mut doc,
            &line.date,
            &what,
            &line.amount,
            &line.balance,
            false,
        );
    }
    row(
        &mut doc,
        &st.last_day,
        "Closing balance",
        "",
        &st.closing,
        true,
    );
    doc.y -= 10.0;
    doc.need(20.0);
    let note = if st.owes {
        format!("Balance due: {}.", st.closing)
    } else if st.in_credit {
        format!("In credit: {}.", st.credit)
    } else {
        "Nothing is owed.".to_string()
    };
    let y = doc.y;
    doc.text(LEFT, y, &note, Font::Regular, 10.0, 0.0);
    doc.finish(&format!("Statement {}", st.period))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_the_fonts_cannot_show_becomes_a_question_mark() {
        assert_eq!(
            encode("€5 – Café"),
            vec![0x80, b'5', b' ', 0x96, b' ', b'C', b'a', b'f', 0xe9]
        );
        assert_eq!(encode("日本"), b"??".to_vec());
    }

    #[test]
    fn amounts_use_the_code_when_the_symbol_is_missing() {
        use settled_jobs::money::Currency;
        let inr = Currency::parse("INR").unwrap();
        assert_eq!(money_for_pdf(Money::new(100_000, inr)), "1,000.00 INR");
        assert_eq!(money_for_pdf(Money::new(1_000, Currency::JPY)), "¥1,000");
        assert_eq!(money_for_pdf(Money::new(1_999, Currency::EUR)), "€19.99");
    }

    #[test]
    fn long_descriptions_wrap_within_the_column() {
        let text = "A long description of consulting work done over several weeks for the client";
        let lines = wrap(text, Font::Regular, 10.0, 150.0);
        assert!(lines.len() > 1);
        assert!(lines.iter().all(|l| width(l, Font::Regular, 10.0) <= 150.0));
        assert_eq!(lines.join(" "), text);
    }
}
