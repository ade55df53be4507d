%%% The application and its supervisor: one state server (the node message and
%%% its store) and one HTTP listener.
-module(hb_node_app).
-behaviour(application).
-behaviour(supervisor).
-export([start/2, stop/1, init/1]).

start(_Type, _Args) ->
    supervisor:start_link({local, hb_node_sup}, ?MODULE, []).

stop(_State) ->
    ok.

init([]) ->
    Children = [
        #{id => hb_node_state, start => {hb_node_state, start_link, []}},
        #{id => hb_node_http, start => {hb_node_http, start_link, []}}
    ],
    {ok, {#{strategy => rest_for_one, intensity => 5, period => 10}, Children}}.
