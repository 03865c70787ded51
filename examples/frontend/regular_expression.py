"""Constrained decoding: the answer matches an IPv4 regular expression."""

from _backend import connect

from sglang import function, gen


@function
def regular_expression_gen(s):
    s += "Q: What is the IP address of the Google DNS servers?\n"
    s += "A: " + gen(
        "answer",
        temperature=0,
        regex=r"((25[0-5]|2[0-4]\d|[01]?\d\d?).){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)",
    )


if __name__ == "__main__":
    connect()
    state = regular_expression_gen.run()
    print(state["answer"])
