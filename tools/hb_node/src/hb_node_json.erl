%%% A small JSON (RFC 8259) encoder and decoder: OTP 25 has no json module.
%%% Objects are maps with binary keys, arrays lists, strings binaries, and
%%% true/false/null atoms. Encoding sorts object keys (stable output).
-module(hb_node_json).
-export([encode/1, decode/1]).

%% ------------------------------------------------------------------ encode

encode(Value) -> iolist_to_binary(enc(Value)).

enc(true) -> <<"true">>;
enc(false) -> <<"false">>;
enc(null) -> <<"null">>;
enc(V) when is_integer(V) -> integer_to_binary(V);
enc(V) when is_float(V) -> float_to_binary(V, [short]);
enc(V) when is_atom(V) -> enc_str(atom_to_binary(V, utf8));
enc(V) when is_binary(V) -> enc_str(V);
enc(V) when is_list(V) -> [$[, join([enc(E) || E <- V]), $]];
enc(V) when is_map(V) ->
    Pairs = lists:sort([{key(K), Val} || {K, Val} <- maps:to_list(V)]),
    [${, join([[enc_str(K), $:, enc(Val)] || {K, Val} <- Pairs]), $}].

key(K) when is_binary(K) -> K;
key(K) when is_atom(K) -> atom_to_binary(K, utf8);
key(K) when is_integer(K) -> integer_to_binary(K).

join([]) -> [];
join([H | T]) -> [H | [[$, | E] || E <- T]].

enc_str(S) -> [$", esc(S), $"].

esc(<<>>) -> [];
esc(<<$", R/binary>>) -> [<<"\\\"">> | esc(R)];
esc(<<$\\, R/binary>>) -> [<<"\\\\">> | esc(R)];
esc(<<$\n, R/binary>>) -> [<<"\\n">> | esc(R)];
esc(<<$\r, R/binary>>) -> [<<"\\r">> | esc(R)];
esc(<<$\t, R/binary>>) -> [<<"\\t">> | esc(R)];
esc(<<C, R/binary>>) when C < 16#20 ->
    [io_lib:format("\\u~4.16.0b", [C]) | esc(R)];
esc(<<C, R/binary>>) -> [C | esc(R)].

%% ------------------------------------------------------------------ decode

%% {ok, Value} | {error, Reason}
decode(Bin) when is_binary(Bin) ->
    try
        {V, Rest} = value(ws(Bin)),
        case ws(Rest) of
            <<>> -> {ok, V};
            _ -> {error, trailing_data}
        end
    catch
        throw:Reason -> {error, Reason};
        error:_ -> {error, invalid_json}
    end.

ws(<<C, R/binary>>) when C =:= $\s; C =:= $\t; C =:= $\n; C =:= $\r -> ws(R);
ws(B) -> B.

value(<<${, R/binary>>) -> object(ws(R), #{});
value(<<$[, R/binary>>) -> array(ws(R), []);
value(<<$", R/binary>>) -> string(R, []);
value(<<"true", R/binary>>) -> {true, R};
value(<<"false", R/binary>>) -> {false, R};
value(<<"null", R/binary>>) -> {null, R};
value(<<C, _/binary>> = B) when C =:= $-; C >= $0, C =< $9 -> number(B);
value(_) -> throw(invalid_json).

object(<<$}, R/binary>>, Acc) when map_size(Acc) =:= 0 -> {Acc, R};
object(<<$", R/binary>>, Acc) ->
    {K, R1} = string(R, []),
    <<$:, R2/binary>> = ws(R1),
    {V, R3} = value(ws(R2)),
    Acc1 = Acc#{K => V},
    case ws(R3) of
        <<$,, R4/binary>> -> object(ws(R4), Acc1);
        <<$}, R4/binary>> -> {Acc1, R4};
        _ -> throw(invalid_json)
    end;
object(_, _) -> throw(invalid_json).

array(<<$], R/binary>>, []) -> {[], R};
array(B, Acc) ->
    {V, R1} = value(B),
    case ws(R1) of
        <<$,, R2/binary>> -> array(ws(R2), [V | Acc]);
        <<$], R2/binary>> -> {lists:reverse([V | Acc]), R2};
        _ -> throw(invalid_json)
    end.

string(<<$", R/binary>>, Acc) -> {unicode:characters_to_binary(lists:reverse(Acc)), R};
string(<<$\\, C, R/binary>>, Acc) ->
    case C of
        $" -> string(R, [$" | Acc]);
        $\\ -> string(R, [$\\ | Acc]);
        $/ -> string(R, [$/ | Acc]);
        $b -> string(R, [$\b | Acc]);
        $f -> string(R, [$\f | Acc]);
        $n -> string(R, [$\n | Acc]);
        $r -> string(R, [$\r | Acc]);
        $t -> string(R, [$\t | Acc]);
        $u -> unicode_escape(R, Acc);
        _ -> throw(invalid_json)
    end;
string(<<C/utf8, R/binary>>, Acc) when C >= 16#20 -> string(R, [C | Acc]);
string(_, _) -> throw(invalid_json).

unicode_escape(<<H:4/binary, "\\u", L:4/binary, R/binary>>, Acc) ->
    Hi = binary_to_integer(H, 16),
    Lo = binary_to_integer(L, 16),
    if
        Hi >= 16#D800, Hi =< 16#DBFF, Lo >= 16#DC00, Lo =< 16#DFFF ->
            string(R, [16#10000 + ((Hi - 16#D800) bsl 10) + (Lo - 16#DC00) | Acc]);
        true ->
            string(<<"\\u", L/binary, R/binary>>, [Hi | Acc])
    end;
unicode_escape(<<H:4/binary, R/binary>>, Acc) ->
    string(R, [binary_to_integer(H, 16) | Acc]);
unicode_escape(_, _) -> throw(invalid_json).

number(B) ->
    {Text, R} = take_number(B, []),
    V = case lists:any(fun(C) -> lists:member(C, ".eE") end, Text) of
            false -> list_to_integer(Text);
            true -> to_float(Text)
        end,
    {V, R}.

take_number(<<C, R/binary>>, Acc)
  when C >= $0, C =< $9; C =:= $-; C =:= $+; C =:= $.; C =:= $e; C =:= $E ->
    take_number(R, [C | Acc]);
take_number(R, Acc) -> {lists:reverse(Acc), R}.

%% "1e5" and "1.5E3": Erlang's list_to_float needs a fraction part.
to_float(Text) ->
    case string:split(string:lowercase(Text), "e") of
        [M, E] -> list_to_float(mantissa(M) ++ "e" ++ E);
        [M] -> list_to_float(mantissa(M))
    end.

mantissa(M) ->
    case lists:member($., M) of
        true -> M;
        false -> M ++ ".0"
    end.
