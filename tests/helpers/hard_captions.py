"""Captions that stress the tokenizer and the scorer's prefix/grouping paths: case, whitespace,
Unicode, emoji, special-token text, and lengths past CLIP's 77-token context."""

HARD_CAPTIONS = [
    "a raccoon driving a tractor",
    "A RACCOON Driving a Tractor!!!",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nand   runs   of spaces",
    "non\u00a0breaking\u2003em\u3000ideographic\u2028line separator",
    "émigré café naïve façade Ångström",
    "漢字とひらがな、カタカナ。한국어 문장",
    "emoji 🦝🚜 family 👨‍👩‍👧‍👦 skin 👍🏽 flag 🇯🇵 keycap 1️⃣",
    "zero\u200bwidth\u200djoiner and soft\u00adhyphen",
    "&amp; &lt;html&gt; entities &nbsp; here",
    "mathematical 𝓈𝒸𝓇𝒾𝓅𝓉 and ｆｕｌｌｗｉｄｔｈ letters",
    "a cat <end_of_text> and then everything after is ignored",
    "<start_of_text> twice <start_of_text>",
    "x",
    "1234567890 3.14159 $%^&*()",
    " ".join(["word"] * 60),  # 62 tokens: fits
    " ".join(f"w{i}" for i in range(120)),  # far past 77 tokens: truncated, end token at 76
    "🦝" * 60,  # emoji split into several byte-level tokens: truncated
    "supercalifragilisticexpialidocious antidisestablishmentarianism " * 3,
]
