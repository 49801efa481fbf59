//! Each PII kind on hand-written true positives (scrubbed, counted) and false positives (left alone).

use super::*;

fn scrubber() -> PiiScrubber {
    PiiScrubber::new(&PiiConfig::default()).unwrap()
}

/// Scrubs `text`; returns the result and the counts.
fn scrub(text: &str) -> (String, PiiCounts) {
    let mut t = text.to_string();
    let mut counts = PiiCounts::new();
    scrubber().scrub(&mut t, &mut counts);
    (t, counts)
}

fn assert_scrubbed(kind: &str, cases: &[(&str, &str)]) {
    for (input, want) in cases {
        let (got, counts) = scrub(input);
        assert_eq!(&got, want, "{kind}: {input}");
        assert!(counts.get(kind).copied().unwrap_or(0) >= 1, "{kind} not counted for {input}: {counts:?}");
    }
}

fn assert_untouched(cases: &[&str]) {
    for input in cases {
        let (got, counts) = scrub(input);
        assert_eq!(&got, input, "false positive: {counts:?}");
        assert!(counts.is_empty(), "false positive counted for {input}: {counts:?}");
    }
}

#[test]
fn emails() {
    assert_scrubbed(
        "email",
        &[
            ("Contact jane.doe@example.org for details.", "Contact <EMAIL> for details."),
            ("Send to J_Smith+lab@mail.hospital.co.uk.", "Send to <EMAIL>."),
        ],
    );
    assert_untouched(&["Follow @cardiology_news on social media.", "user@localhost has no domain", "a @ b"]);
}

#[test]
fn urls_with_credentials() {
    assert_scrubbed(
        "url_credentials",
        &[
            (
                "db at postgres://admin:s3cret@db.example.com:5432/x",
                "db at postgres://<CREDENTIALS>@db.example.com:5432/x",
            ),
            ("see https://bob:hunter2@intranet.local/path", "see https://<CREDENTIALS>@intranet.local/path"),
        ],
    );
    // The password part must not be left for the e-mail rule to half-match.
    let (got, counts) = scrub("ftp://u:p@files.example.com");
    assert_eq!(got, "ftp://<CREDENTIALS>@files.example.com");
    assert_eq!(counts.get("email"), None);
    assert_untouched(&["https://example.com:8080/a/b?q=1", "https://example.com/users/@alice", "ratio 3:1 at rest"]);
}

#[test]
fn phone_numbers() {
    assert_scrubbed(
        "phone",
        &[
            ("Call 555-123-4567 today", "Call <PHONE> today"),
            ("Call 555.123.4567 today", "Call <PHONE> today"),
            ("Office: (555) 123-4567.", "Office: <PHONE>."),
            ("Reach us at +44 20 7946 0958.", "Reach us at <PHONE>."),
            ("Tel: 020 7946 0958", "Tel: <PHONE>"),
        ],
    );
    assert_untouched(&[
        "Blood pressure was 120/80 mmHg and glucose 5.6 mmol/L.",
        "Enrolled 100 200 3000 patients over 1998-2004.",
        "Published 2020-01-15, doi 10.1000/182, ISBN 978-3-16-148410-0.",
        "Version 1.2.3 released; IP 192.168.1.1 blocked.",
    ]);
}

#[test]
fn dates_of_birth() {
    assert_scrubbed(
        "date_of_birth",
        &[
            ("Patient DOB: 03/14/1962, male.", "Patient DOB: <DATE_OF_BIRTH>, male."),
            ("Date of birth 1962-03-14.", "Date of birth <DATE_OF_BIRTH>."),
            ("She was born on March 14, 1962 in Ohio.", "She was born on <DATE_OF_BIRTH> in Ohio."),
            ("birthdate: 14 Mar 1962", "birthdate: <DATE_OF_BIRTH>"),
        ],
    );
    // Dates that are not birth dates stay (they carry study timelines, not identities).
    assert_untouched(&[
        "The trial ran from 03/14/1962 to 05/01/1963.",
        "Published on March 14, 1962.",
        "Patients born in 1950 or later were eligible.",
    ]);
}

#[test]
fn postal_addresses() {
    assert_scrubbed(
        "postal_address",
        &[
            ("Lives at 742 Evergreen Terrace, Springfield, IL 62704.", "Lives at <ADDRESS>."),
            ("Clinic: 1600 Pennsylvania Avenue, Suite 200, Washington, DC 20500", "Clinic: <ADDRESS>"),
            ("Mail to P.O. Box 1234 please", "Mail to <ADDRESS> please"),
        ],
    );
    assert_untouched(&[
        "Take 2 tablets daily with food.",
        "Dr. Smith saw 12 patients on the ward.",
        "In 3 Trials the effect on Street crime was not measured.",
    ]);
}

#[test]
fn record_and_id_numbers() {
    assert_scrubbed(
        "record_id",
        &[
            ("MRN: 00482913 admitted.", "MRN: <ID> admitted."),
            ("Patient ID #A-2049-331 discharged.", "Patient ID #<ID> discharged."),
            ("SSN 123-45-6789 on file", "SSN <ID> on file"),
            ("his number 123-45-6789 leaked", "his number <ID> leaked"),
        ],
    );
    assert_untouched(&[
        "The record number of patients increased.",
        "Patient id was unknown.",
        "Table 12-3 and 2019-2020.",
    ]);
}

#[test]
fn counts_add_up_per_kind() {
    let (got, counts) = scrub("a@b.com, c@d.org; call 555-123-4567; MRN 12345678");
    assert_eq!(got, "<EMAIL>, <EMAIL>; call <PHONE>; MRN <ID>");
    assert_eq!(counts["email"], 2);
    assert_eq!(counts["phone"], 1);
    assert_eq!(counts["record_id"], 1);
}

#[test]
fn the_table_is_extensible_and_kinds_can_be_disabled() {
    let config = PiiConfig {
        disable: vec!["email".into()],
        extra_rules: vec![PiiRule {
            kind: "nhs_number".into(),
            pattern: r"(?-u:\b)[0-9]{3} [0-9]{3} [0-9]{4}(?-u:\b)".into(),
            replacement: "<NHS>".into(),
        }],
        ..PiiConfig::default()
    };
    let s = PiiScrubber::new(&config).unwrap();
    let mut t = "NHS 943 476 5919, mail x@y.com".to_string();
    let mut counts = PiiCounts::new();
    s.scrub(&mut t, &mut counts);
    assert_eq!(t, "NHS <NHS>, mail x@y.com");
    assert_eq!(counts["nhs_number"], 1);
    assert!(s.kinds().contains(&"nhs_number".to_string()) && !s.kinds().contains(&"email".to_string()));
    let bad = PiiConfig {
        extra_rules: vec![PiiRule { kind: "broken".into(), pattern: "(unclosed".into(), replacement: "".into() }],
        ..PiiConfig::default()
    };
    let e = PiiScrubber::new(&bad).unwrap_err().to_string();
    assert!(e.contains("broken"), "{e}");
    let unknown = PiiConfig { disable: vec!["emails".into()], ..PiiConfig::default() };
    assert!(PiiScrubber::new(&unknown).unwrap_err().to_string().contains("emails"));
}
