"""The one masking function: keyed, stable, finds every address form, redacts secrets."""

from __future__ import annotations

import orjson
import pytest

from app.errors import ConfigError
from app.masking import Masker, generate_key, masker_for
from app.settings import load_settings

KEY = "k" * 32
UNUSUAL = (
    "Müller.Jörg@bücher.example",
    '"john doe"@example.com',
    "user@[192.0.2.1]",
    "Ada.Lovelace+newsletter@Example.COM",
    "ÜBER@EXAMPLE.ORG",
    "o'brien@example.ie",
    "用户@例子.广告",
)


def test_mask_is_keyed_stable_and_ignores_case_and_unicode_form() -> None:
    masker = Masker(KEY)
    assert masker.email("Ada@Example.com") == masker.email("ada@example.com")
    # NFD "ü" (u + combining diaeresis) is the same address as NFC "ü"
    assert masker.email("mu\u0308ller@example.com") == masker.email("m\u00fcller@example.com")
    assert masker.email("ada@example.com") != Masker("x" * 32).email("ada@example.com")
    assert masker.email("ada@example.com").startswith("<email:")
    assert "ada" not in masker.email("ada@example.com")


@pytest.mark.parametrize("address", UNUSUAL)
def test_every_unusual_address_is_found_in_text(address: str) -> None:
    masker = Masker(KEY)
    text = f"identify failed for {address}, retrying"
    masked = masker.text(text)
    assert address not in masked
    assert masker.email(address) in masked
    assert masked.startswith("identify failed for <email:")
    assert masked.endswith(", retrying")


@pytest.mark.parametrize("address", UNUSUAL)
def test_addresses_are_found_json_escaped_and_bytes_escaped(address: str) -> None:
    masker = Masker(KEY)
    escaped = orjson.dumps({"email": address}).decode()  # \" for the quoted local part
    ascii_escaped = '{"email": ' + _ascii_json(address) + "}"
    bytes_repr = repr({"email": address}.__repr__().encode())
    for text in (escaped, ascii_escaped, bytes_repr):
        masked = masker.text(text)
        assert "@" not in masked.replace("<email:", ""), (text, masked)
    # an escaped address gets the same mask as the plain one
    assert masker.email(address) in masker.text(ascii_escaped)


def _ascii_json(text: str) -> str:
    return "".join(
        ch if ord(ch) < 128 and ch != '"' else ('\\"' if ch == '"' else f"\\u{ord(ch):04x}")
        for ch in text
    ).join('""')


def test_payload_masks_inside_json_strings_and_non_utf8_bytes() -> None:
    masker = Masker(KEY)
    payload = orjson.dumps({"user_identities": {"email": '"john doe"@example.com'}, "n": 1})
    masked = orjson.loads(masker.payload(payload))
    assert masked == {
        "user_identities": {"email": masker.email('"john doe"@example.com')},
        "n": 1,
    }
    latin1 = "not json: müller@bücher.example".encode("latin-1")
    shown = masker.payload(latin1)
    assert "@" not in shown.replace("<email:", "")
    assert shown.startswith("not json: <email:")


def test_a_cut_payload_with_a_long_run_is_masked_in_one_pass() -> None:
    # a dead letter cut to fit Kafka (not JSON any more): one address and a 200,000-character
    # run; an unbounded local part scanned the run from each of its characters (quadratic:
    # `deadletter show` of a 1 MB payload did not finish)
    masker = Masker(KEY)
    cut = b'{"email": "zoe@example.com", "p": "' + b"y" * 200_000
    shown = masker.payload(cut)
    assert shown.startswith(f'{{"email": "{masker.email("zoe@example.com")}", "p": "yyy')
    assert len(shown) == len(cut) - len("zoe@example.com") + len(masker.email("zoe@example.com"))
    # a run longer than any local part: its last 128 characters are masked with the domain
    assert masker.text("a" * 300 + "@example.com").startswith("a" * 172 + "<email:")


def test_text_redacts_secrets_and_url_credentials_first() -> None:
    masker = Masker(KEY, ("s3cret-api-key", "admin:pw", "pw"))
    text = masker.text("key=s3cret-api-key url=http://admin:pw@emulator.example:8089/x pw")
    assert text == "key=********** url=http://**********@emulator.example:8089/x **********"
    assert Masker(KEY).text("kafka://bob:hunter2@broker:9092") == "kafka://**********@broker:9092"


def test_plain_text_and_kafka_positions_are_left_alone() -> None:
    masker = Masker(KEY)
    line = "0@12  mparticle-batches[3]@7  ready in 2.0s user @ host"
    assert masker.text(line) == line


def test_values_are_masked_by_kind_and_key() -> None:
    masker = Masker(KEY)
    assert masker.value("Ada") == masker.value("Ada")
    assert masker.value("Ada") != masker.value("ada")
    assert masker.value(42).startswith("<value:")
    assert masker.value("Ada") != Masker(KEY).email("Ada")


def test_the_deployment_masker_uses_mask_key_and_every_secret() -> None:
    settings = load_settings(
        forwarding_enabled=True,
        customerio_site_id="site",
        customerio_api_key="api-key-value",
        support_token="t" * 20,
        mask_key=KEY,
    )
    assert set(settings.secret_values()) == {"api-key-value", "t" * 20, KEY}
    masker = masker_for(settings)
    assert masker.email("ada@example.com") == Masker(KEY).email("ada@example.com")
    assert "url-pass" not in masker.text("GET http://admin:url-pass@127.0.0.1:8089/auth")
    printed = str(settings.redacted())
    for secret in settings.secret_values():
        assert secret not in printed


def test_without_a_key_each_process_masks_differently_but_never_raw() -> None:
    settings = load_settings(forwarding_enabled=False)
    one, two = masker_for(settings), masker_for(settings)
    assert one.email("ada@example.com") != two.email("ada@example.com")
    assert len(generate_key()) >= 40


def test_short_token_or_key_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(forwarding_enabled=False, support_token="short-t0ken", mask_key="k3y")
    message = str(refused.value)
    assert "MPCIO_SUPPORT_TOKEN: must be at least 16 characters" in message
    assert "MPCIO_MASK_KEY: must be at least 16 characters" in message
    assert "short-t0ken" not in message
    assert "k3y" not in message


def test_an_invalid_url_setting_is_echoed_without_its_credentials() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(forwarding_enabled=False, customerio_url="http://admin:pw-123@host/x/y")
    assert "MPCIO_CUSTOMERIO_URL" in str(refused.value)
    assert "pw-123" not in str(refused.value)
