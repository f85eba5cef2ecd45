#!/usr/bin/env python3
"""A test SAML 2.0 identity provider: signs responses with signxml (lxml + cryptography).

Independent of the gateway's Rust XML-DSig verifier, so a passing test means two
implementations agree. Started by tests/support/saml.rs; not for production.

    python saml_idp.py [--name-id user@corp.example] [--role ROLE_ARN,PROVIDER_ARN ...]

Prints one JSON line on stdout once listening: {"port": N, "entity_id": "...", ...}.
Exits when stdin closes (the test process ended), so no IdP outlives its tests.

Endpoints (127.0.0.1 only):
  GET  /cert                  primary signing certificate, PEM
  GET  /certs                 {"primary"|"secondary"|"ec": base64 DER}
  POST /response  JSON spec   {"saml_response": base64}   (see build_response for the spec keys)
  POST /defaults  JSON spec   merge into the spec /sso uses (e.g. another user's name_id/roles)
  GET  /sso?SAMLRequest=..&RelayState=..   inflate the AuthnRequest and answer an HTML page that
                              auto-POSTs a valid signed response to its ACS URL
  GET  /metadata              IdP metadata XML
"""

import argparse
import base64
import copy
import datetime
import html
import json
import secrets
import sys
import threading
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml import XMLSigner
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod

NS_P = "urn:oasis:names:tc:SAML:2.0:protocol"
NS_A = "urn:oasis:names:tc:SAML:2.0:assertion"
NS_DS = "http://www.w3.org/2000/09/xmldsig#"
NSMAP = {"samlp": NS_P, "saml": NS_A}
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
ROLE_ATTR = "https://aws.amazon.com/SAML/Attributes/Role"
DURATION_ATTR = "https://aws.amazon.com/SAML/Attributes/SessionDuration"
SESSION_NAME_ATTR = "https://aws.amazon.com/SAML/Attributes/RoleSessionName"


def p(tag):
    return "{%s}%s" % (NS_P, tag)


def a(tag):
    return "{%s}%s" % (NS_A, tag)


def new_id():
    return "_" + secrets.token_hex(16)


def instant(offset_secs):
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset_secs)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def issue_instant(spec, which):
    """The IssueInstant of the `which` element ("response" or "assertion"), or None to leave it
    out: `<which>_issue_instant` (an offset in seconds, a literal string, or null), else
    `issue_instant_offset` (default 0, for both)."""
    key = which + "_issue_instant"
    value = spec[key] if key in spec else spec.get("issue_instant_offset", 0)
    if value is None or isinstance(value, str):
        return value
    return instant(value)


def with_issue_instant(attrs, spec, which):
    value = issue_instant(spec, which)
    if value is not None:
        attrs["IssueInstant"] = value
    return attrs


class KeyPair:
    def __init__(self, name, private_key):
        self.name = name
        self.key = private_key
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bucketgate test idp " + name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(private_key, hashes.SHA256())
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()
        self.cert_der = self.cert.public_bytes(serialization.Encoding.DER)
        self.key_pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


class Sha1Signer(XMLSigner):
    """signxml refuses SHA-1 by default; the attack matrix needs a SHA-1 signature."""

    def check_deprecated_methods(self):
        pass


def signer_for(spec, keypair):
    if spec.get("case") == "sha1":
        return Sha1Signer(
            signature_algorithm=SignatureMethod.RSA_SHA1,
            digest_algorithm=DigestAlgorithm.SHA1,
            c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
        )
    if spec.get("case") == "sha1_digest":
        return Sha1Signer(
            signature_algorithm=SignatureMethod.RSA_SHA256,
            digest_algorithm=DigestAlgorithm.SHA1,
            c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
        )
    method = SignatureMethod.ECDSA_SHA256 if keypair.name == "ec" else SignatureMethod.RSA_SHA256
    return XMLSigner(
        signature_algorithm=method,
        digest_algorithm=DigestAlgorithm.SHA256,
        c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
    )


def sign(element, spec, keypair):
    """Enveloped signature over `element` (by its ID), placed right after its Issuer."""
    placeholder = etree.Element("{%s}Signature" % NS_DS, nsmap={"ds": NS_DS}, Id="placeholder")
    issuer = element.find(a("Issuer"))
    issuer.addnext(placeholder)
    return signer_for(spec, keypair).sign(
        element,
        key=keypair.key_pem,
        cert=keypair.cert_pem,
        reference_uri=element.get("ID"),
    )


def text_el(parent, tag, text, **attrs):
    el = etree.SubElement(parent, tag, **attrs)
    el.text = text
    return el


class Idp:
    def __init__(self, args):
        self.keys = {
            "primary": KeyPair("primary", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            "secondary": KeyPair("secondary", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            "ec": KeyPair("ec", ec.generate_private_key(ec.SECP256R1())),
        }
        self.base = None  # set once the port is known
        self.defaults = {"name_id": args.name_id, "roles": [r.split(",", 1) for r in args.role]}
        self.lock = threading.Lock()

    @property
    def entity_id(self):
        return self.base + "/metadata"

    def assertion(self, spec, assertion_id, now_offsets):
        nb, noa, scd_noa, snoa = now_offsets
        el = etree.Element(a("Assertion"), nsmap={"saml": NS_A},
                           **with_issue_instant({"ID": assertion_id, "Version": "2.0"}, spec, "assertion"))
        text_el(el, a("Issuer"), spec.get("issuer", self.entity_id))
        subject = etree.SubElement(el, a("Subject"))
        text_el(subject, a("NameID"), spec.get("name_id", "user@corp.example"),
                Format="urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress")
        data_attrs = {"NotOnOrAfter": instant(scd_noa), "Recipient": spec["recipient"]}
        if spec.get("in_response_to"):
            data_attrs["InResponseTo"] = spec["in_response_to"]
        if not spec.get("no_confirmation"):
            confirmation = etree.SubElement(subject, a("SubjectConfirmation"),
                                            Method=spec.get("method", "urn:oasis:names:tc:SAML:2.0:cm:bearer"))
            etree.SubElement(confirmation, a("SubjectConfirmationData"), **data_attrs)
        if spec.get("extra_confirmation_offset") is not None:
            # A second confirmation (bearer unless extra_confirmation_method), ending at its own time.
            method = spec.get("extra_confirmation_method", "urn:oasis:names:tc:SAML:2.0:cm:bearer")
            extra = etree.SubElement(subject, a("SubjectConfirmation"), Method=method)
            etree.SubElement(extra, a("SubjectConfirmationData"),
                             **dict(data_attrs, NotOnOrAfter=instant(spec["extra_confirmation_offset"])))
        conditions = etree.SubElement(el, a("Conditions"), NotBefore=instant(nb), NotOnOrAfter=instant(noa))
        restriction = etree.SubElement(conditions, a("AudienceRestriction"))
        text_el(restriction, a("Audience"), spec["audience"])
        authn_attrs = {"AuthnInstant": instant(0), "SessionIndex": new_id()}
        if snoa is not None:
            authn_attrs["SessionNotOnOrAfter"] = instant(snoa)
        authn = etree.SubElement(el, a("AuthnStatement"), **authn_attrs)
        context = etree.SubElement(authn, a("AuthnContext"))
        text_el(context, a("AuthnContextClassRef"),
                "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport")
        statement = etree.SubElement(el, a("AttributeStatement"))
        roles = spec.get("roles", [])
        if roles:
            attribute = etree.SubElement(statement, a("Attribute"), Name=ROLE_ATTR)
            for role, provider in roles:
                text_el(attribute, a("AttributeValue"), "%s,%s" % (role, provider))
        if spec.get("session_duration") is not None:
            attribute = etree.SubElement(statement, a("Attribute"), Name=DURATION_ATTR)
            text_el(attribute, a("AttributeValue"), str(spec["session_duration"]))
        if spec.get("role_session_name") is not None:
            attribute = etree.SubElement(statement, a("Attribute"), Name=SESSION_NAME_ATTR)
            text_el(attribute, a("AttributeValue"), spec["role_session_name"])
        if len(statement) == 0:
            el.remove(statement)
        return el

    def response_element(self, spec, children, status=None):
        attrs = with_issue_instant({"ID": spec.get("response_id") or new_id(), "Version": "2.0"}, spec, "response")
        # "destination": null leaves the attribute out.
        destination = spec.get("destination", spec["recipient"])
        if destination is not None:
            attrs["Destination"] = destination
        if spec.get("in_response_to"):
            attrs["InResponseTo"] = spec["in_response_to"]
        el = etree.Element(p("Response"), nsmap=NSMAP, **attrs)
        text_el(el, a("Issuer"), spec.get("response_issuer", spec.get("issuer", self.entity_id)))
        st = etree.SubElement(el, p("Status"))
        etree.SubElement(st, p("StatusCode"), Value=status or "urn:oasis:names:tc:SAML:2.0:status:Success")
        for child in children:
            el.append(child)
        return el

    def build(self, spec):
        """Returns the XML bytes for `spec`:

        case: valid (default) | tampered | unsigned | two_assertions | xsw_extensions | xsw_object |
              xsw_sibling | xsw_wrapped_response | xsw_wrapped_response_only | signed_fragment |
              comment_name_id | detached_signature | doctype | entity | xxe | oversized | sha1 |
              sha1_digest | status_error | encrypted
        audience, recipient (required); destination (default recipient); issuer (default the
        IdP's entity id); response_issuer; in_response_to; name_id; roles [[role, provider]];
        session_duration; role_session_name; not_before_offset (-5); not_on_or_after_offset
        (300); scd_not_on_or_after_offset (not_on_or_after_offset);
        session_not_on_or_after_offset (3600; null omits); assertion_id; sign: assertion
        (default) | response | both | none; key: primary (default) | secondary | ec;
        method (SubjectConfirmation method); no_confirmation (true: no SubjectConfirmation);
        extra_confirmation_offset (a second SubjectConfirmation ending then);
        extra_confirmation_method (its method, default bearer); issue_instant_offset (seconds,
        default 0: the IssueInstant of the Response and the Assertion); response_issue_instant,
        assertion_issue_instant (an offset, a literal string, or null to leave it out; override
        issue_instant_offset for one element); evil_name_id (XSW payload, default
        admin@corp.example).
        """
        case = spec.get("case", "valid")
        keypair = self.keys[spec.get("key", "primary")]
        sign_where = spec.get("sign", "assertion")
        if case == "unsigned":
            sign_where = "none"
        noa = spec.get("not_on_or_after_offset", 300)
        offsets = (
            spec.get("not_before_offset", -5),
            noa,
            spec.get("scd_not_on_or_after_offset", noa),
            spec.get("session_not_on_or_after_offset", 3600),
        )
        assertion_id = spec.get("assertion_id") or new_id()

        if case == "status_error":
            resp = self.response_element(spec, [], status="urn:oasis:names:tc:SAML:2.0:status:Responder")
            return etree.tostring(resp)

        assertion = self.assertion(spec, assertion_id, offsets)
        if sign_where in ("assertion", "both"):
            assertion = sign(assertion, spec, keypair)
        resp = self.response_element(spec, [assertion])
        if sign_where in ("response", "both"):
            resp = sign(resp, spec, keypair)

        evil_spec = dict(spec, name_id=spec.get("evil_name_id", "admin@corp.example"))

        def evil_assertion(same_id=False):
            return self.assertion(evil_spec, assertion_id if same_id else new_id(), offsets)

        signed = resp.find(a("Assertion"))
        if case == "tampered":
            name_id = signed.find(a("Subject")).find(a("NameID"))
            name_id.text = evil_spec["name_id"]
        elif case == "two_assertions":
            resp.append(evil_assertion())
        elif case == "xsw_sibling":
            signed.addprevious(evil_assertion())
        elif case == "xsw_extensions":
            # XSW: the signed original moves into samlp:Extensions, the evil one takes its place.
            index = resp.index(signed)
            resp.remove(signed)
            resp.insert(index, evil_assertion(same_id=True))
            ext = etree.Element(p("Extensions"))
            ext.append(signed)
            resp.find(p("Status")).addprevious(ext)
        elif case == "xsw_object":
            # XSW: the signed original moves into a ds:Object of a copied signature inside the
            # evil assertion.
            evil = evil_assertion(same_id=True)
            sig = copy.deepcopy(signed.find("{%s}Signature" % NS_DS))
            obj = etree.SubElement(sig, "{%s}Object" % NS_DS)
            resp.replace(signed, evil)
            obj.append(signed)
            evil.find(a("Issuer")).addnext(sig)
        elif case == "xsw_wrapped_response":
            # XSW on a signed Response: it goes into the Extensions of an evil Response that
            # carries the evil assertion.
            outer = self.response_element(spec, [evil_assertion()])
            ext = etree.Element(p("Extensions"))
            ext.append(resp)
            outer.find(p("Status")).addprevious(ext)
            resp = outer
        elif case == "xsw_wrapped_response_only":
            # The signed Response (and the one assertion in it) under an evil unsigned Response.
            outer = self.response_element(dict(spec, destination="https://evil.example/acs"), [])
            ext = etree.Element(p("Extensions"))
            ext.append(resp)
            outer.find(p("Status")).addprevious(ext)
            resp = outer
        elif case == "signed_fragment":
            # A genuinely signed element elsewhere; the assertion itself is unsigned.
            if sign_where != "none":
                raise ValueError("signed_fragment wants sign=none")
            frag = etree.Element(a("Advice"), nsmap={"saml": NS_A}, ID=new_id())
            text_el(frag, a("Issuer"), self.entity_id)
            frag = sign(frag, spec, keypair)
            ext = etree.Element(p("Extensions"))
            ext.append(frag)
            resp.find(p("Status")).addprevious(ext)
        elif case == "comment_name_id":
            # After signing: exclusive C14N drops comments, so the signature stays valid.
            name_id = signed.find(a("Subject")).find(a("NameID"))
            full = name_id.text
            cut = spec.get("comment_at", len(full) // 2)
            name_id.text = full[:cut]
            comment = etree.Comment("")
            comment.tail = full[cut:]
            name_id.append(comment)
        elif case == "detached_signature":
            # Still a valid signature over the assertion, but beside it instead of inside it.
            sig = signed.find("{%s}Signature" % NS_DS)
            signed.remove(sig)
            signed.addnext(sig)
        elif case == "encrypted":
            enc = etree.Element(a("EncryptedAssertion"))
            etree.SubElement(enc, "{http://www.w3.org/2001/04/xmlenc#}EncryptedData")
            resp.replace(signed, enc)
        elif case == "oversized":
            ext = etree.Element(p("Extensions"))
            filler = etree.SubElement(ext, "{urn:test:filler}Filler")
            filler.text = "x" * (300 * 1024)
            resp.find(p("Status")).addprevious(ext)
        elif case not in ("valid", "unsigned", "sha1", "sha1_digest", "doctype", "entity", "xxe"):
            raise ValueError("unknown case " + case)

        xml = etree.tostring(resp)
        if case == "doctype":
            xml = b"<!DOCTYPE samlp:Response>" + xml
        elif case == "entity":
            xml = b'<!DOCTYPE samlp:Response [<!ENTITY who "admin@corp.example">]>' + xml
        elif case == "xxe":
            xml = b'<!DOCTYPE samlp:Response [<!ENTITY who SYSTEM "file:///etc/passwd">]>' + xml
        return xml

    def response_b64(self, spec):
        return base64.b64encode(self.build(spec)).decode()

    def metadata(self):
        cert_b64 = base64.b64encode(self.keys["primary"].cert_der).decode()
        return (
            '<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" '
            'xmlns:ds="http://www.w3.org/2000/09/xmldsig#" entityID="%s">'
            '<md:IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">'
            '<md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>%s'
            "</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"
            '<md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" '
            'Location="%s/sso"/></md:IDPSSODescriptor></md:EntityDescriptor>'
        ) % (html.escape(self.entity_id), cert_b64, html.escape(self.base))

    def sso_page(self, query):
        params = urllib.parse.parse_qs(query, keep_blank_values=True)
        raw = base64.b64decode(params["SAMLRequest"][0])
        request = etree.fromstring(zlib.decompress(raw, -15))
        if request.tag != p("AuthnRequest"):
            raise ValueError("not an AuthnRequest")
        acs = request.get("AssertionConsumerServiceURL")
        sp_entity = request.find(a("Issuer")).text
        with self.lock:
            spec = dict(self.defaults)
        spec.setdefault("audience", sp_entity)
        spec.setdefault("recipient", acs)
        spec["in_response_to"] = request.get("ID")
        saml_response = self.response_b64(spec)
        relay = params.get("RelayState", [None])[0]
        relay_input = (
            '<input type="hidden" name="RelayState" value="%s"/>' % html.escape(relay, quote=True)
            if relay is not None
            else ""
        )
        return (
            "<!DOCTYPE html><html><head><title>Test IdP</title></head>"
            '<body onload="document.forms[0].submit()">'
            '<form method="post" action="%s">'
            '<input type="hidden" name="SAMLResponse" value="%s"/>%s'
            '<noscript><button type="submit">Continue</button></noscript>'
            "</form></body></html>"
        ) % (html.escape(spec["recipient"], quote=True), saml_response, relay_input)


def make_handler(idp):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args):
            pass

        def reply(self, status, body, content_type):
            if isinstance(body, str):
                body = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def fail(self, exc):
            self.reply(400, json.dumps({"error": repr(exc)}), "application/json")

        def do_GET(self):
            path, _, query = self.path.partition("?")
            try:
                if path == "/cert":
                    self.reply(200, idp.keys["primary"].cert_pem, "application/x-pem-file")
                elif path == "/certs":
                    body = {name: base64.b64encode(k.cert_der).decode() for name, k in idp.keys.items()}
                    self.reply(200, json.dumps(body), "application/json")
                elif path == "/metadata":
                    self.reply(200, idp.metadata(), "application/samlmetadata+xml")
                elif path == "/sso":
                    self.reply(200, idp.sso_page(query), "text/html; charset=utf-8")
                else:
                    self.reply(404, "not found", "text/plain")
            except Exception as exc:  # noqa: BLE001 - a test tool: report, keep serving
                self.fail(exc)

        def do_POST(self):
            try:
                length = int(self.headers.get("Content-Length", "0"))
                spec = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/response":
                    self.reply(200, json.dumps({"saml_response": idp.response_b64(spec)}), "application/json")
                elif self.path == "/defaults":
                    with idp.lock:
                        idp.defaults.update(spec)
                    self.reply(200, "{}", "application/json")
                else:
                    self.reply(404, "not found", "text/plain")
            except Exception as exc:  # noqa: BLE001
                self.fail(exc)

    return Handler


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--name-id", default="user@corp.example")
    parser.add_argument("--role", action="append", default=[], help="ROLE_ARN,PROVIDER_ARN")
    args = parser.parse_args()
    idp = Idp(args)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(idp))
    server.daemon_threads = True
    port = server.server_address[1]
    idp.base = "http://127.0.0.1:%d" % port
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"port": port, "base": idp.base, "entity_id": idp.entity_id}), flush=True)
    # Exit when the test process goes away (its end of our stdin closes).
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()
