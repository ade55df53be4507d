%%% The node message and its store, where HyperBEAM keeps them:
%%%  - config.flat ($HB_CONFIG, default "config.flat": relative to the working
%%%    directory, which relx's start script sets to the release root);
%%%  - the node's key ($HB_KEY, default "hyperbeam-key.json"), created at
%%%    first start;
%%%  - the store "cache-mainnet/" relative to the working directory: a boot
%%%    log and every adopted node message.
%%% POST semantics follow HyperBEAM's dev_meta:info/3: a node whose message
%%% has initialized = permanent refuses every change; otherwise a change is
%%% adopted when the operator is `unclaimed` (this node checks no signatures,
%%% so a claimed node refuses every request: HyperBEAM would refuse an
%%% unsigned one).
-module(hb_node_state).
-behaviour(gen_server).
-export([start_link/0, info/0, update/1, port/0]).
-export([init/1, handle_call/3, handle_cast/2]).
-export([parse_flat/1, apply_update/2]).

-define(STORE, "cache-mainnet").

start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

info() -> gen_server:call(?MODULE, info).
update(Body) -> gen_server:call(?MODULE, {update, Body}).
port() -> gen_server:call(?MODULE, port).

%% ------------------------------------------------------------------ pure parts

%% config.flat: one "key: value" per line; integer-looking values are integers.
parse_flat(Text) ->
    Lines = binary:split(Text, [<<"\n">>, <<"\r\n">>], [global, trim_all]),
    lists:foldl(
        fun(Line, Acc) ->
            case binary:split(Line, <<":">>) of
                [K, V] -> Acc#{string:trim(K) => flat_value(string:trim(V))};
                _ -> Acc
            end
        end, #{}, Lines).

flat_value(V) ->
    try binary_to_integer(V) catch error:badarg -> V end.

%% {ok, NewMsg} | {error, Reason}: HyperBEAM's permanence and operator checks.
apply_update(Body, Msg) when is_map(Body) ->
    case {maps:get(<<"initialized">>, Msg, false), maps:get(<<"operator">>, Msg, none)} of
        {<<"permanent">>, _} ->
            {error, <<"The node message of this machine is already permanent. "
                      "It cannot be changed.">>};
        {_, <<"unclaimed">>} ->
            Changes = maps:without([<<"path">>, <<"method">>], Body),
            History = maps:get(<<"node_history">>, Msg, []),
            {ok, maps:merge(Msg, Changes#{<<"node_history">> => History ++ [Changes]})};
        {_, _} ->
            {error, <<"Unauthorized">>}
    end;
apply_update(_, _) ->
    {error, <<"the body must be a JSON object">>}.

%% ------------------------------------------------------------------ server

init([]) ->
    ConfigPath = os:getenv("HB_CONFIG", "config.flat"),
    Flat = case file:read_file(ConfigPath) of
               {ok, Text} -> parse_flat(Text);
               {error, enoent} -> #{}
           end,
    {ok, Cwd} = file:get_cwd(),
    ok = filelib:ensure_dir(filename:join(?STORE, "x")),
    Address = address(key(os:getenv("HB_KEY", "hyperbeam-key.json"))),
    Sev = sev_guest(),
    Defaults = #{<<"port">> => env_port(), <<"operator">> => Address,
                 <<"initialized">> => <<"false">>},
    Msg = maps:merge(Defaults, Flat),
    Store = filename:join(Cwd, ?STORE),
    ok = file:write_file(filename:join(?STORE, "boots"),
                         [integer_to_list(os:system_time(second)), "\n"], [append]),
    log("hb_node: cwd ~s, config ~s, store ~s, /dev/sev-guest ~s, port ~p",
        [Cwd, ConfigPath, Store, Sev, maps:get(<<"port">>, Msg)]),
    {ok, #{msg => Msg, address => Address, sev => Sev, store => Store, cwd => Cwd,
           config => ConfigPath}}.

handle_call(info, _From, S = #{msg := Msg}) ->
    {reply, Msg#{<<"address">> => maps:get(address, S),
                 <<"sev_guest">> => maps:get(sev, S),
                 <<"store">> => list_to_binary(maps:get(store, S)),
                 <<"store_link">> => store_link(),
                 <<"store_files">> => store_files(),
                 <<"cwd">> => list_to_binary(maps:get(cwd, S)),
                 <<"config_location">> => list_to_binary(maps:get(config, S)),
                 <<"node">> => <<"hbos-hb_node">>}, S};
handle_call(port, _From, S = #{msg := Msg}) ->
    {reply, maps:get(<<"port">>, Msg), S};
handle_call({update, Body}, _From, S = #{msg := Msg}) ->
    case apply_update(Body, Msg) of
        {ok, New} ->
            N = length(maps:get(<<"node_history">>, New)),
            ok = file:write_file(
                   filename:join(?STORE, "node-message-" ++ integer_to_list(N) ++ ".json"),
                   hb_node_json:encode(maps:without([<<"node_history">>], New))),
            {reply, {ok, N}, S#{msg := New}};
        Error ->
            {reply, Error, S}
    end.

handle_cast(_, S) -> {noreply, S}.

%% ------------------------------------------------------------------ helpers

env_port() ->
    case os:getenv("HB_PORT") of
        false -> 8734;
        P -> list_to_integer(P)
    end.

%% Where the store really is (the image links it into /var/lib/hyperbeam).
store_link() ->
    case file:read_link(?STORE) of
        {ok, Target} -> list_to_binary(Target);
        {error, _} -> null
    end.

store_files() ->
    case file:list_dir(?STORE) of
        {ok, Names} -> [list_to_binary(N) || N <- lists:sort(Names)];
        {error, _} -> []
    end.

%% The node's key: created at first start (never part of the image).
key(Path) ->
    case file:read_file(Path) of
        {ok, Bin} -> Bin;
        {error, enoent} ->
            Key = hb_node_json:encode(#{<<"kty">> => <<"hbos-local">>,
                                        <<"d">> => binary:encode_hex(
                                                     crypto:strong_rand_bytes(32))}),
            ok = filelib:ensure_dir(Path),
            ok = file:write_file(Path, Key),
            ok = file:change_mode(Path, 8#600),
            Key
    end.

address(Key) ->
    base64url(crypto:hash(sha256, Key)).

base64url(Bin) ->
    B = base64:encode(Bin),
    << <<(case C of $+ -> $-; $/ -> $_; _ -> C end)>> || <<C>> <= B, C =/= $= >>.

%% What HyperBEAM's SNP device needs: can /dev/sev-guest be opened?
sev_guest() ->
    case file:open("/dev/sev-guest", [read, raw, binary]) of
        {ok, Fd} -> file:close(Fd), <<"opened">>;
        {error, Reason} -> atom_to_binary(Reason, utf8)
    end.

log(Fmt, Args) ->
    io:format(Fmt ++ "~n", Args).
