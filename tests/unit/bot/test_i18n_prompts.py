"""Chinese prompts everywhere a prompt goes: the blocklist, the token count, the protocol, the PNG's text chunks."""

from __future__ import annotations

import asyncio
import io
import zlib

import pytest
from PIL import Image

from bot.blocklist import first_match, prompt_matches
from bot.imagine import MAX_PROMPT_CHARS
from gpu.engine import ImageEngine
from gpu.png import encode_png, read_png_text
from gpu.tiny import build_tokenizer
from zimage_protocol.frames import read_frame
from zimage_protocol.messages import CountTokens, decode

PROMPT = "一只穿着宇航服的橘猫，坐在月球上，背景是地球，电影感光线"


# -- the blocklist: Chinese is written without spaces, so "whole words" cannot mean "between spaces" -------------

@pytest.mark.parametrize("prompt", [
    "一个裸体的女人",        # inside a sentence, Chinese on both sides
    "裸体",                 # alone
    "画一个裸体",           # at the end
    "裸体 portrait",        # next to English
    "a 裸体 portrait",
    "一个裸\u200b体的女人",  # a zero-width space inside it
    "一个 裸体 的女人",      # spaced out by someone used to English
])
def test_a_chinese_word_is_found_inside_a_chinese_sentence(prompt):
    assert prompt_matches("裸体", prompt)


@pytest.mark.parametrize("prompt", ["一个nude女人", "一个 nude 女人", "nude的女人", "画一个NUDE"])
def test_an_english_word_is_found_next_to_chinese_characters(prompt):
    assert prompt_matches("nude", prompt)


@pytest.mark.parametrize("prompt", ["一个prude女人", "denuded山丘", "nudes的照片"])
def test_an_english_word_is_still_a_whole_word_next_to_chinese(prompt):
    assert not prompt_matches("nude", prompt)


def test_a_chinese_phrase_and_a_regex_in_chinese():
    assert prompt_matches("血腥 暴力", "一张血腥 暴力的海报")
    assert prompt_matches("re:裸.{0,2}体", "一个裸露身体的人")
    assert not prompt_matches("re:裸.{0,2}体", "裸色的墙，一个人的身体")
    assert first_match(["猫", "狗"], PROMPT) == "猫" and first_match(["狗"], PROMPT) is None


def test_full_width_letters_in_a_chinese_prompt_are_folded():
    assert prompt_matches("nude", "一个ｎｕｄｅ女人")  # full-width Latin, as Chinese input methods type it


# -- the token count the bot checks a prompt with -----------------------------------------------------------

def test_a_chinese_prompt_is_counted_in_tokens_not_characters(tmp_path):
    engine = ImageEngine("tiny", tmp_path)
    engine.tokenizer = build_tokenizer()  # the tiny model's byte-level tokenizer: one token per UTF-8 byte
    empty = engine.count_tokens("")
    assert engine.count_tokens(PROMPT) - empty == len(PROMPT.encode())  # 3 bytes per character here
    assert engine.count_tokens("猫") - empty == 3


async def test_a_chinese_prompt_crosses_the_protocol_intact():
    reader = asyncio.StreamReader()
    longest = (PROMPT * 200)[:MAX_PROMPT_CHARS]  # JSON escapes each character as 6 bytes: still far below the limit
    for prompt in (PROMPT, longest):
        reader.feed_data(CountTokens(id="r1", prompt=prompt).encode())
        decoded = decode(await read_frame(reader))
        assert isinstance(decoded, CountTokens) and decoded.prompt == prompt


# -- the PNG's text chunks ---------------------------------------------------------------------------------

def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    chunks, at = [], 8
    while at < len(png):
        length = int.from_bytes(png[at:at + 4], "big")
        kind, data = png[at + 4:at + 8], png[at + 8:at + 8 + length]
        assert zlib.crc32(kind + data) == int.from_bytes(png[at + 8 + length:at + 12 + length], "big")
        chunks.append((kind, data))
        at += 12 + length
    return chunks


def test_the_png_keeps_a_chinese_prompt_in_an_utf8_itxt_chunk():
    png = encode_png(Image.new("RGB", (8, 8)), {"prompt": PROMPT, "seed": 7})
    assert read_png_text(png) == {"prompt": PROMPT, "seed": "7"}
    itxt = {data.split(b"\0", 1)[0]: data for kind, data in _chunks(png) if kind == b"iTXt"}
    # keyword \0 compression-flag compression-method language-tag \0 translated-keyword \0 UTF-8 text
    keyword, rest = itxt[b"prompt"].split(b"\0", 1)
    flag, method, rest = rest[0], rest[1], rest[2:]
    _language, _translated, text = rest.split(b"\0", 2)
    assert (flag, method) == (0, 0) and text.decode("utf-8") == PROMPT
    assert not any(kind == b"tEXt" and data.startswith(b"prompt\0") for kind, data in _chunks(png))
    with Image.open(io.BytesIO(png)) as image:  # what any PNG reader (and the bot's delivery) sees
        assert image.text["prompt"] == PROMPT
