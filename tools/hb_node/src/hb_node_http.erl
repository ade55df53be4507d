%%% HTTP/1.1 over gen_tcp, one request per connection (Connection: close):
%%%   GET  /~meta@1.0/info       200, the node message as JSON
%%%   GET  /~meta@1.0/info/KEY   200, one key (404 if absent)
%%%   POST /~meta@1.0/info       a JSON object body (Content-Length, up to
%%%                              1 MiB): 200 when adopted, 400 when refused
%%%                              (HyperBEAM: status_code(error) = 400)
-module(hb_node_http).
-export([start_link/0, init/1]).

-define(INFO, "/~meta@1.0/info").
-define(MAX_BODY, 1048576).

start_link() ->
    proc_lib:start_link(?MODULE, init, [self()]).

init(Parent) ->
    Port = hb_node_state:port(),
    {ok, Listen} = gen_tcp:listen(Port, [binary, {packet, http_bin}, {active, false},
                                         {reuseaddr, true}, {backlog, 128}]),
    io:format("hb_node: listening on port ~p~n", [Port]),
    proc_lib:init_ack(Parent, {ok, self()}),
    accept(Listen).

accept(Listen) ->
    {ok, Sock} = gen_tcp:accept(Listen),
    Pid = spawn(fun() -> receive go -> serve(Sock) end end),
    ok = gen_tcp:controlling_process(Sock, Pid),
    Pid ! go,
    accept(Listen).

serve(Sock) ->
    try request(Sock) of
        {Method, Path, Body} -> reply(Sock, route(Method, Path, Body))
    catch
        throw:{status, Code, Text} -> reply(Sock, {Code, #{<<"status">> => Code,
                                                           <<"body">> => Text}});
        _:_ -> ok
    end,
    gen_tcp:close(Sock).

request(Sock) ->
    case gen_tcp:recv(Sock, 0, 30000) of
        {ok, {http_request, Method, {abs_path, Path}, _Vsn}} ->
            Headers = headers(Sock, #{}),
            ok = inet:setopts(Sock, [{packet, raw}]),
            {Method, Path, body(Sock, Headers)};
        _ ->
            throw({status, 400, <<"bad request">>})
    end.

headers(Sock, Acc) ->
    case gen_tcp:recv(Sock, 0, 30000) of
        {ok, {http_header, _, Name, _, Value}} ->
            headers(Sock, Acc#{string:lowercase(hname(Name)) => Value});
        {ok, http_eoh} -> Acc;
        _ -> throw({status, 400, <<"bad headers">>})
    end.

hname(N) when is_atom(N) -> atom_to_binary(N, utf8);
hname(N) -> N.

body(Sock, Headers) ->
    case maps:get(<<"content-length">>, Headers, <<"0">>) of
        <<"0">> -> <<>>;
        Len ->
            N = binary_to_integer(Len),
            N =< ?MAX_BODY orelse throw({status, 413, <<"body too large">>}),
            case maps:get(<<"expect">>, Headers, <<>>) of
                <<"100-continue">> -> gen_tcp:send(Sock, <<"HTTP/1.1 100 Continue\r\n\r\n">>);
                _ -> ok
            end,
            {ok, Body} = gen_tcp:recv(Sock, N, 30000),
            Body
    end.

route('GET', <<?INFO>>, _) ->
    {200, hb_node_state:info()};
route('GET', <<?INFO, "/", Key/binary>>, _) ->
    case maps:find(Key, hb_node_state:info()) of
        {ok, V} -> {200, V};
        error -> {404, #{<<"status">> => 404, <<"body">> => <<"not found">>}}
    end;
route('POST', <<?INFO>>, Body) ->
    case hb_node_json:decode(Body) of
        {ok, Map} when is_map(Map) ->
            case hb_node_state:update(Map) of
                {ok, N} ->
                    {200, #{<<"body">> => <<"Node message updated.">>,
                            <<"history-length">> => N}};
                {error, Reason} ->
                    {400, #{<<"status">> => 400, <<"body">> => Reason}}
            end;
        _ ->
            {400, #{<<"status">> => 400, <<"body">> => <<"the body must be a JSON object">>}}
    end;
route(_, _, _) ->
    {404, #{<<"status">> => 404, <<"body">> => <<"not found">>}}.

reply(Sock, {Code, Value}) ->
    Body = hb_node_json:encode(Value),
    gen_tcp:send(Sock, [<<"HTTP/1.1 ">>, integer_to_binary(Code), <<" ">>, reason(Code),
                        <<"\r\nContent-Type: application/json\r\nContent-Length: ">>,
                        integer_to_binary(byte_size(Body)),
                        <<"\r\nConnection: close\r\n\r\n">>, Body]).

reason(200) -> <<"OK">>;
reason(400) -> <<"Bad Request">>;
reason(404) -> <<"Not Found">>;
reason(413) -> <<"Payload Too Large">>;
reason(_) -> <<"Error">>.
