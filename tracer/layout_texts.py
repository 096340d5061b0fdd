"""The record header texts tracer shipped before a capture's layout identity covered the parsed layout
(tracer/layout.py LAYOUT_SCHEME), each with the digest of its parse.

Those captures carry the sha256 of their header's text. With this table, one replays when the layout its
text defines is this tracer's, although the text differs (a comment or a counter changed: record.h's
ST_RING_FULL comment did), and is refused otherwise. The table is complete and closed: every text of
these headers in git history before the change (tests/test_layout_identity.py recomputes it from git),
and no capture is written with a text hash any more. uprobe.h is not here: its text never changed, and
its parse takes struct read_slot from record.h, so a digest of its text alone would not be its layout.
"""

TEXT_LAYOUTS: dict[str, dict[str, str]] = {  # header -> {sha256 of a text: layout_digest of its parse}
    "record.h": {
        "fc635c8f8f40fdd45b9b37092b2d855b3745d706a158a8dccc7f8b83f5ab1997":
            "4486978b03356f822c78e961a259159e44f0c4711f69e3231aaac78419fd6bfa",  # in a332a5c
        "2dd869e44e373bd9400117d349adbfae990f73ebb432c32eb614d85b252ded3f":
            "4486978b03356f822c78e961a259159e44f0c4711f69e3231aaac78419fd6bfa",  # in e927032
        "38883ac364b8682b38aa47cb3d478dc716259c3e7510bee0d4061d3d0eba6cd6":
            "a1eb7b032585c9fa633bfca1941881fba6249579000c139661511cfda9553847",  # in 3332ad6
        "30cdfbf6e2653a42d5217cfe576d792e9107ec21c2e659cab2649b92e7a613ca":
            "76eba8c1e37cb2df947f6c7f9b8dcfa9910ef5b3de8c8a11d2b063d5b465034f",  # in fe55444
        "91825b7f545a6ed78309a7a0039582e293ef1f688eaeb50949ec22e791e2b516":
            "e18b00323ba2776f4a55a32b029d662435c4fd801f343556fb3fa817b6710ad2",  # in af9cdb4
        "4f8eece37c118e7fba8855925b8ab9fa5bdc747961f21e136c6dd9cc05935e88":
            "55b77c51811cf6b700270c9aca3a66b3f7bd36cb379da2ac46c39b6bf8b02729",  # in 5f8c881
        "21f27d889a9a5c96cd6b4da4879f96988200f0a7f167f079af470b8269f2ed0c":
            "a330af4b3f6cc71de5557a637638cee2ce7dc7d9822e33b80f1ed72769161fca",  # in 69d1722
    },
    "uevents_watch.h": {
        "1cb6c86d00130b5356ccdc9c3717125ebf1181c47c9860192d512e0ab9be97b7":
            "d0c4ff10552b5506ecb198d5b323bec8162731249ed6381c17f2bca18640de9b",  # in ea53c88
        "587decaa120167f44c0eb8a22af93195fcf3580ea4941846a5d3abd518b8bb86":
            "7a012eec9cade30ef3c5309512a50f80c25e08a76d766ae16838c059bb48e3e9",  # in 610e1ce
    },
}
