"""The company configuration: the demo file is valid, and each kind of mistake names its field."""

import re
from pathlib import Path

import pytest
import yaml

from playbook.config import ConfigError, load_config
from playbook.settings import DEFAULT_CONFIG


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "company.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


@pytest.fixture()
def demo() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


def test_demo_company_is_valid():
    config = load_config(DEFAULT_CONFIG)
    assert config.company.currency == "GBP"
    assert {"sales", "payments", "operating_costs", "tax", "interactions", "clients"} <= set(config.sources)
    assert config.sources["payments"].key == ("payment_id",)
    assert config.source_for_key("landing/payments/2024/wb.xlsx")[0] == "payments"


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (lambda d: d["company"].update(timezone="Mars/Olympus"), "company.timezone", "unknown time zone"),
        (lambda d: d["company"].update(currency="pounds"), "company.currency", "pattern"),
        (lambda d: d["company"].pop("name"), "company.name", "Field required"),
        (lambda d: d["sources"]["sales"].update(kind="ftp"), "sources.sales.kind", "excel"),
        (lambda d: d["sources"]["sales"].update(table="orders"), "sources.sales.table", "unknown table"),
        (lambda d: d["sources"]["sales"].update(schedule="every day"), "sources.sales.schedule", "AWS schedule"),
        (lambda d: d["sources"]["sales"]["columns"].pop("amount"), "sources.sales", "amount"),
        (lambda d: d["sources"]["sales"]["columns"].update(colour="Colour"), "sources.sales", "colour"),
        (lambda d: d["sources"]["sales"].update(prefix="/abs/"), "sources.sales.prefix", "relative"),
        (lambda d: d["sources"]["payments"]["read"].update(sheet_pattern="(["), "sources.payments.read.sheet_pattern",
         "regular expression"),
        (lambda d: d["sources"]["payments"]["read"].update(header_row=-1), "sources.payments.read.header_row",
         "greater than or equal"),
        (lambda d: d["sources"]["operating_costs"]["read"].update(thousands=","),
         "sources.operating_costs.read", "must differ"),
        (lambda d: d["sources"]["sales"].update(colour="red"), "sources.sales.colour", "Extra inputs"),
        (lambda d: d["reports"]["email"].update(recipients=["ops"]), "reports.email.recipients", "ops"),
        (lambda d: d["sources"].update({"Bad Name": d["sources"]["sales"]}), "sources", "Bad Name"),
        (lambda d: d["sources"]["operating_costs"]["read"].update(date_format="%d/%m"),
         "sources.operating_costs.read.date_format", "needs %d, %m and one of %Y or %y"),
        (lambda d: d["sources"]["operating_costs"]["read"].update(date_format="%d %b %Y"),
         "sources.operating_costs.read.date_format", "%b not supported"),
        (lambda d: d["sources"]["sales"].update(natural_key=["amount"]), "sources.sales",
         "natural_key: 'amount' is money"),
        (lambda d: d["sources"]["sales"].update(natural_key=["order_id", "colour"]), "sources.sales",
         "natural_key: 'colour' is not a mapped column"),
        (lambda d: d["sources"]["sales"].update(amounts="debit_credit"), "sources.sales",
         "amount comes from columns.debit and columns.credit"),
        (lambda d: d["sources"]["sales"].update(attributes={"amount": "Line Total"}), "sources.sales",
         "attributes: amount"),
        (lambda d: d["sources"]["tax"].update(currency="EUR"), "sources.tax", "currency: tax rows have no currency"),
        (lambda d: d["reports"].update(schedule="cron(0 6 * * * *)"), "reports.schedule",
         "exactly one of day-of-month and day-of-week must be '?'"),
        (lambda d: d["sources"]["sales"].update(schedule="cron(0 25 * * ? *)"), "sources.sales.schedule",
         "not a valid AWS cron expression"),
    ],
)
def test_each_error_names_the_file_and_field(tmp_path, demo, mutate, field, words):
    mutate(demo)
    path = write(tmp_path, demo)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert f"{path}: {field}" in message
    assert words in message


def test_missing_file_and_broken_yaml_are_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    path = write(tmp_path, "company: [unclosed\n")
    with pytest.raises(ConfigError, match=r"company.yaml: not valid YAML at line 2"):
        load_config(path)


@pytest.mark.parametrize("fmt", ["%d/%m/%y", "%d.%m.%Y", "%Y%m%d", "%m/%d/%Y %H:%M", "%d-%m-%y %H:%M:%S"])
def test_a_date_format_is_proved_by_reading_its_own_example(tmp_path, demo, fmt):
    demo["sources"]["operating_costs"]["read"]["date_format"] = fmt
    assert load_config(write(tmp_path, demo)).sources["operating_costs"].read.date_format == fmt


def test_the_readmes_source_example_is_valid(tmp_path, demo):
    readme = (DEFAULT_CONFIG.parent / "README.md").read_text()
    block = re.search(r"```yaml\n(  euro_account:.*?)```", readme, re.S)
    assert block, "the README's configuration example is missing"
    demo["sources"].update(yaml.safe_load(block[1]))
    config = load_config(write(tmp_path, demo))
    assert config.sources["euro_account"].amounts == "debit_credit"
    assert config.sources["customers_from_orders"].attribute_columns["segment_code"].type == "integer"
